#!/usr/bin/env bash
# On a GPU host (16 cores, one GPU), both halves side by side:
#  - the household loop (`loop.py --env household`, its defaults) on seeds 0, 1, 2, training on the GPU;
#  - the rest of ScienceWorld's gold-path replay (the train split), SHARDS processes on the CPU cores,
#    each starting from the committed table; their rows are merged into LOGS/scienceworld_gold.tsv.
# Needs java on PATH and the scienceworld and textworld-express packages (requirements-scienceworld.txt,
# requirements-household.txt). Small outputs (results, logs, evaluation trajectories) are packed into
# LOGS/household-small.tgz every 30 s and at the end, so a cut run still leaves its figures.
#
#   bash research/gpu_household.sh [RUN] [LOGS] [SECONDS]      # default runs/gpu-household, RUN, 500 s
#   LIMITS="--train-limit 16 --eval-limit 8 --sft-epochs 1" SHARDS=2 bash research/gpu_household.sh /tmp/x   # a dry run
set -uo pipefail
cd "$(dirname "$0")/.."  # the repo root
RUN=${1:-runs/gpu-household}
LOGS=${2:-$RUN}
SECONDS_FOR_RUNS=${3:-500}
LIMITS=${LIMITS:-}
SHARDS=${SHARDS:-9}
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
mkdir -p "$RUN" "$LOGS"; LOGS=$(cd "$LOGS" && pwd)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; nproc --all; java -version 2>&1 | head -1
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } > "$LOGS/machine.txt"

collect() {  # results, logs and evaluation trajectories as one archive; the gold shards merged into one table
  (cd "$RUN" && find . -type f \( -name "results.jsonl" -o -name "*.log" -o -path "*/eval/*.jsonl" -o -name "*args.json" \
      -o -name "pairs.jsonl" \) -size -8M | tar czf "$LOGS/household-small.tgz.tmp" -T - 2>/dev/null) \
      && mv "$LOGS/household-small.tgz.tmp" "$LOGS/household-small.tgz"
  cp envs/scienceworld_gold.tsv "$LOGS/scienceworld_gold.tsv.tmp"
  python -m envs.scienceworld --out "$LOGS/scienceworld_gold.tsv.tmp" --merge "$RUN"/gold-*.tsv > /dev/null 2>&1 \
      && mv "$LOGS/scienceworld_gold.tsv.tmp" "$LOGS/scienceworld_gold.tsv"
}
for ((i = 0; i < SHARDS; i++)); do
  cp envs/scienceworld_gold.tsv "$RUN/gold-$i.tsv"
  OMP_NUM_THREADS=1 timeout "$SECONDS_FOR_RUNS" python -m envs.scienceworld train --shard "$i/$SHARDS" \
      --out "$RUN/gold-$i.tsv" > "$RUN/gold-$i.log" 2>&1 &
done
for seed in 0 1 2; do
  ( timeout "$SECONDS_FOR_RUNS" python loop.py --env household --run "$RUN/household-s$seed" --seed $seed $LIMITS \
      > "$RUN/household-s$seed.log" 2>&1; echo "household-s$seed exit $?" >> "$RUN/household-s$seed.log" ) &
done
( while sleep 30; do collect; done ) & syncer=$!
wait $(jobs -p | grep -v "^$syncer$")
kill $syncer 2>/dev/null
collect
tail -n 2 "$RUN"/household-s*.log
cat "$LOGS/machine.txt"
python -m envs.scienceworld --out "$LOGS/scienceworld_gold.tsv" --merge "$LOGS/scienceworld_gold.tsv"
