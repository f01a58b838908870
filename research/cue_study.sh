#!/usr/bin/env bash
# The cue study (results/cue-study/PREREGISTRATION.md): on the attribute cue, per seed, the loop with dev and
# both tests, then online RL and RFT from the same SFT model; the dev check on seed 0 comes first and stops
# everything if SFT leaves no room to learn; then the price cue (the default shop) the same way. Both run the
# SFT settings the study was pre-registered with (lr 5e-3, warm-up over a tenth of the steps), not the
# lecture recipe's SFT lr of today, so that the files in results/cue-study come back as they are.
#   bash research/cue_study.sh [SEEDS]        # default: 0 1 2, in runs/cue/seedS and runs/cue-price/seedS
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${*:-0 1 2}
env=shop:cue=attribute
sft="--sft-lr 5e-3 --sft-warmup-ratio 0.1"  # the pre-registered SFT settings
python loop.py --env $env $sft --run runs/cue/seed0 --seed 0 --eval-splits dev > runs/cue/seed0.dev.log 2>&1
python research/cue_study.py --check-dev runs/cue/seed0
for s in $seeds; do
  python loop.py --env $env $sft --run runs/cue/seed$s --seed $s --eval-splits dev,test_seen,test_unseen > runs/cue/seed$s.loop.log 2>&1
  mkdir -p runs/cue-price
  python loop.py $sft --run runs/cue-price/seed$s --seed $s --variants divergence-nll --eval-splits dev,test_seen,test_unseen \
    > runs/cue-price/seed$s.loop.log 2>&1
done
for s in $seeds; do  # online RL and RFT from each SFT model, on each cue
  python research/online_rl.py --run runs/cue/seed$s --seed $s --eval-splits dev,test_seen,test_unseen > runs/cue/seed$s.rl.log 2>&1
  python research/experiments.py --run runs/cue/seed$s --env $env $sft --seed $s --methods sft,rft \
    --eval-splits dev,test_seen,test_unseen > runs/cue/seed$s.rft.log 2>&1
  python research/online_rl.py --run runs/cue-price/seed$s --seed $s --eval-splits dev,test_seen,test_unseen \
    > runs/cue-price/seed$s.rl.log 2>&1
  python research/experiments.py --run runs/cue-price/seed$s $sft --seed $s --methods sft,rft \
    --eval-splits dev,test_seen,test_unseen > runs/cue-price/seed$s.rft.log 2>&1
done
runs=$(for s in $seeds; do echo runs/cue/seed$s; done)
price=$(for s in $seeds; do echo runs/cue-price/seed$s; done)
python research/cue_study.py --collect results/cue-study --price $price --attribute $runs
python research/pages.py --collect results/cue-study/attribute $runs
python research/pages.py --collect results/lecture-lr5e-3 $price
python research/pages.py
