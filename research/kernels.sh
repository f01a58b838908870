#!/usr/bin/env bash
# Which of the pinned CPU-kernel variables decide the numbers on this host: sft.py on 200 expert
# trajectories (one epoch, the lecture model) under each set, its weights' sha1 per set, into
# results/kernels/sft-hashes.txt (research/pages.py makes docs/performance.md's table from it). ~3 min.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/kernels; mkdir -p $out results/kernels
python explore.py --env shop --split train --expert --limit 200 --out $out/expert.jsonl > /dev/null
: > results/kernels/sft-hashes.txt
run() { name=$1; shift
  env "$@" python sft.py --model tiny --data $out/expert.jsonl --tiny-layers 2 --epochs 1 --batch-size 4 \
    --out $out/$name > $out/$name.log 2>&1
  echo "$(sha1sum < $out/$name/model.safetensors | cut -d' ' -f1)  $name" >> results/kernels/sft-hashes.txt; }
run all ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
run none
run aten ATEN_CPU_CAPABILITY=avx2
run aten_mkl ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
run aten_onednn ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
run mkl_onednn MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
