#!/usr/bin/env bash
# On a GPU host (16 cores, one GPU): the lever `eto` on shop:instruction over 3 seeds, for the
# tiny model (2M parameters, its rollouts on CPU) and a wider one (384 wide, 6 layers: ~11M, SFT lr 1e-3:
# at the tiny model's 3e-3 it does not train; rollouts on the GPU), all six runs side by side, each its
# own `levers.py --run`. One expert file serves them all.
# Everything is built on the machine; nothing is downloaded. Small outputs (dev trajectories, rows,
# summaries, logs) are packed into LOGS/levers-small.tgz every 30 s and at the end, so a cut run still
# leaves its figures.
#
#   bash research/gpu_levers.sh [RUN] [LOGS] [SECONDS]      # default runs/gpu-levers, RUN, 520 s for the runs
#   LIMITS="--train-limit 20 --dev-limit 8 --sft-epochs 1" bash research/gpu_levers.sh /tmp/x    # a dry run
#   TINY_LEVERS=trajectory-dpop bash research/gpu_levers.sh     # other levers (levers.py's names) for either model
set -uo pipefail
cd "$(dirname "$0")/.."  # the repo root
RUN=${1:-runs/gpu-levers}
LOGS=${2:-$RUN}
SECONDS_FOR_RUNS=${3:-520}
LIMITS=${LIMITS:-}
TINY_LEVERS=${TINY_LEVERS:-eto}
WIDE_LEVERS=${WIDE_LEVERS:-eto}
ENV=shop:instruction
WIDE="--tiny-hidden 384 --tiny-layers 6 --lr 1e-3"
export OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
mkdir -p "$RUN" "$LOGS"; LOGS=$(cd "$LOGS" && pwd)
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; nproc --all
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } > "$LOGS/machine.txt"
limit=""; [[ "$LIMITS" =~ --train-limit\ ([0-9]+) ]] && limit="--limit ${BASH_REMATCH[1]}"
python explore.py --env $ENV --split train --expert $limit --out "$RUN/expert.jsonl" > "$LOGS/expert.log" 2>&1 || exit 1

collect() {  # the small files of every run (rows, dev trajectories, summaries, logs), as one archive in LOGS:
  # a device tool may bring back only a few files, and none deep in folders
  (cd "$RUN" && find . -type f \( -name "levers*" -o -path "*/dev/*.jsonl" -o -name "*.args.json" -o -name args.json \
      -o -name "*.log" \) -not -name "levers-small.tgz*" -size -8M | tar czf "$LOGS/levers-small.tgz.tmp" -T - 2>/dev/null) \
      && mv "$LOGS/levers-small.tgz.tmp" "$LOGS/levers-small.tgz"
}
one_run() {  # name seed levers levers.py flags...
  local name=$1 seed=$2 levers=$3; shift 3
  mkdir -p "$RUN/$name/seed$seed"
  cp "$RUN/expert.jsonl" "$RUN/expert.jsonl.args.json" "$RUN/$name/seed$seed/"
  timeout "$SECONDS_FOR_RUNS" python research/levers.py --run "$RUN/$name" --env $ENV --seeds "$seed" --levers "$levers" $LIMITS "$@" \
      > "$RUN/$name/run.log" 2>&1
  echo "$name exit $?" >> "$RUN/$name/run.log"
}
for seed in 0 1 2; do
  one_run tiny-s$seed $seed "$TINY_LEVERS" --explore-device cpu &
  one_run wide-s$seed $seed "$WIDE_LEVERS" --sft-args "$WIDE" &
done
( while sleep 30; do collect; done ) & syncer=$!
wait $(jobs -p | grep -v "^$syncer$")
kill $syncer 2>/dev/null
collect
grep -h "exit" "$RUN"/*/run.log
cat "$RUN"/*/levers.md 2>/dev/null
