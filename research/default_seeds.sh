#!/usr/bin/env bash
# The default loop's 3-seed table: per seed, `python loop.py` (its time and printed table), then the
# divergence-nll variant and every model on dev as well (finished stages are reused), then online RL from
# the same SFT model; the results files go to results/default (research/pages.py --collect), from which
# research/pages.py writes the tables of README.md and docs/results.md. About 1 hour on 2 CPU cores.
#   bash research/default_seeds.sh [SEEDS]        # default: 0 1 2; seed 0 runs in runs/default
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${*:-0 1 2}
runs=()
for s in $seeds; do
  run=runs/seed$s; [ "$s" = 0 ] && run=runs/default
  python loop.py --run $run --seed $s > $run.loop.log 2>&1
  python loop.py --run $run --seed $s --variants divergence-nll --eval-splits dev,test_seen,test_unseen > $run.all.log 2>&1
  runs+=($run)
done
for run in "${runs[@]}"; do
  python online_rl.py --run $run --seed "$(python -c "import json; print(json.load(open('$run/loop_args.json'))['seed'])")" \
    --eval-splits dev,test_seen,test_unseen > $run.rl.log 2>&1
done
python research/pages.py --collect results/default "${runs[@]}"
python research/pages.py
