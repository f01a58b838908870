#!/usr/bin/env bash
# The default loop's 3-seed table: per seed, `python loop.py` (its time and printed table), then the
# divergence-nll variant and every model on dev as well (finished stages are reused); then, from the same SFT
# models, online RL, Best-of-4, RFT and failure-guided SFT. The results files go to results/default
# (research/pages.py --collect), from which research/pages.py writes the tables of README.md and
# docs/results.md. Each stage's seconds are in its summary (results/default/seedS/summaries.jsonl).
#   bash research/default_seeds.sh [SEEDS]        # default: 0 1 2; seed 0 runs in runs/default
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${*:-0 1 2}
runs=()
for s in $seeds; do
  run=runs/seed$s; [ "$s" = 0 ] && run=runs/default
  # the plain loop, timed from scratch (a finished one is kept: its log holds the time the pages quote)
  grep -q '"stage": "loop"' $run.loop.log 2>/dev/null || python loop.py --run $run --seed $s > $run.loop.log 2>&1
  python loop.py --run $run --seed $s --variants divergence-nll --eval-splits dev,test_seen,test_unseen > $run.all.log 2>&1
  runs+=($run)
done
seed_of() { python -c "import json; print(json.load(open('$1/loop_args.json'))['seed'])"; }
for run in "${runs[@]}"; do
  python research/online_rl.py --run $run --seed $(seed_of $run) --eval-splits dev,test_seen,test_unseen > $run.rl.log 2>&1
  # Best-of-4 from the same SFT model (the paper's Best-of-N row: an oracle over samples, no training)
  python research/experiments.py --run $run --seed $(seed_of $run) --methods sft,bon > $run.bon.log 2>&1
done
for run in "${runs[@]}"; do
  # RFT from the same SFT model, and failure-guided SFT from RFT's samples (their rows join the loop's in
  # RUN/results.jsonl; pages.py --collect rebuilds every row from the evaluations)
  python research/experiments.py --run $run --seed $(seed_of $run) --methods sft,rft,failure-sft \
    --eval-splits dev,test_seen,test_unseen \
    > $run.rft.log 2>&1
done
python research/pages.py --collect results/default "${runs[@]}"
python research/pages.py
