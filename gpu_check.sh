#!/usr/bin/env bash
# The GPU check (issue 13): run it wherever a CUDA machine is at hand and put its figures in the README
# with the card's name. Nothing on the CPU path depends on it. Everything it needs travels with the repo:
# the tiny model is built on the machine, nothing is downloaded.
#
#   bash gpu_check.sh [RUN]          # default RUN: runs/gpu-check; about 10 minutes on one GPU
set -euo pipefail
cd "$(dirname "$0")"
RUN=${1:-runs/gpu-check}
python -c "import torch; assert torch.cuda.is_available(), 'gpu_check.sh: no CUDA device here'"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# 1. the default loop on the GPU (stages default to --device cuda), training matmuls in bf16
/usr/bin/time -f "loop wall: %e s" python loop.py --run "$RUN" --autocast bf16
# 2. where the time goes there
python bench.py --run "$RUN" --only matmul,sft,dpo,rollout
# 3. several processes, where there are several GPUs: DDP SFT and DPO, one GPU a rank
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
  /usr/bin/time -f "sft, 2 ranks: %e s" torchrun --standalone --nproc-per-node 2 sft.py --model tiny \
      --data "$RUN/expert.jsonl" --out "$RUN/sft-ddp" --autocast bf16
  /usr/bin/time -f "dpo, 2 ranks: %e s" torchrun --standalone --nproc-per-node 2 dpo.py --model "$RUN/sft" \
      --pairs "$RUN/iter1/pairs.jsonl" --out "$RUN/dpo-ddp" --lr 1e-4 --beta 1 --epochs 2 --sft-weight 1 --autocast bf16
fi
