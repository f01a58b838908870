#!/usr/bin/env bash
# The GPU check: run it wherever a CUDA machine is at hand and put its figures in the README
# with the card's name. Nothing on the CPU path depends on it. Everything it needs travels with the repo:
# the tiny model is built on the machine, nothing is downloaded. Each part has its own time limit, so
# a slow part leaves the others' figures; the logs go to LOGS (default: RUN).
#
#   bash research/gpu_check.sh [RUN] [LOGS]     # default RUN: runs/gpu-check; at most ~8.5 minutes by its limits
#   (on an H100 the loop was still in DPO at 275 s: give part 1 more time where the device allows)
set -uo pipefail
cd "$(dirname "$0")/.."  # the repo root
RUN=${1:-runs/gpu-check}
LOGS=${2:-$RUN}
mkdir -p "$RUN" "$LOGS"
python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device here')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOGS/gpu.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$LOGS/gpu.txt"
# 1. the default loop on the GPU (stages default to --device cuda), training matmuls in bf16
timeout 330 /usr/bin/time -f "loop wall: %e s" python loop.py --run "$RUN" --autocast bf16 > "$LOGS/loop.log" 2>&1
echo "loop exit $?" >> "$LOGS/loop.log"
grep -v "it/s\]\|s/it\]" "$LOGS/loop.log" | tail -30
# 2. where the time goes there (the model on the GPU; every figure side by side)
timeout 170 python research/bench.py --run "$RUN" --device cuda > "$LOGS/bench.log" 2>&1
echo "bench exit $?" >> "$LOGS/bench.log"
grep "^|\|exit\|torch" "$LOGS/bench.log"
# 3. several processes, where there are several GPUs: DDP SFT and DPO, one GPU a rank
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
  timeout 300 /usr/bin/time -f "sft, 2 ranks: %e s" torchrun --standalone --nproc-per-node 2 sft.py --model tiny \
      --data "$RUN/expert.jsonl" --out "$RUN/sft-ddp" --autocast bf16 2>&1 | tail -3
  timeout 300 /usr/bin/time -f "dpo, 2 ranks: %e s" torchrun --standalone --nproc-per-node 2 dpo.py --model "$RUN/sft" \
      --pairs "$RUN/iter1/pairs.jsonl" --out "$RUN/dpo-ddp" --lr 1e-4 --beta 1 --epochs 2 --sft-weight 1 --autocast bf16 2>&1 | tail -3
fi
cp "$RUN/results.jsonl" "$RUN/report.html" "$LOGS/" 2>/dev/null
