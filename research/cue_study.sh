#!/usr/bin/env bash
# The cue study (results/cue-study/PREREGISTRATION.md): on the attribute cue, per seed, the loop with dev and
# both tests, then online RL and RFT from the same SFT model; the dev check on seed 0 comes first and stops
# everything if SFT leaves no room to learn. The price cue's runs are the default table's
# (research/default_seeds.sh).
#   bash research/cue_study.sh [SEEDS]        # default: 0 1 2, in runs/cue/seedS
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${*:-0 1 2}
env=shop:cue=attribute
python loop.py --env $env --run runs/cue/seed0 --seed 0 --eval-splits dev > runs/cue/seed0.dev.log 2>&1
python research/cue_study.py --check-dev runs/cue/seed0
for s in $seeds; do
  python loop.py --env $env --run runs/cue/seed$s --seed $s --eval-splits dev,test_seen,test_unseen > runs/cue/seed$s.loop.log 2>&1
done
for s in $seeds; do
  python research/online_rl.py --run runs/cue/seed$s --seed $s --eval-splits dev,test_seen,test_unseen > runs/cue/seed$s.rl.log 2>&1
  python research/experiments.py --run runs/cue/seed$s --env $env --seed $s --methods sft,rft \
    --eval-splits dev,test_seen,test_unseen > runs/cue/seed$s.rft.log 2>&1
done
runs=$(for s in $seeds; do echo runs/cue/seed$s; done)
python research/cue_study.py --collect results/cue-study --price runs/default runs/seed1 runs/seed2 --attribute $runs
python research/pages.py --collect results/cue-study/attribute $runs
python research/pages.py
