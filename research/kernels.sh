#!/usr/bin/env bash
# Which CPU-kernel settings decide the numbers on this host: sft.py on 200 expert trajectories (one epoch,
# the lecture model, 2 threads) under each setting, its weights' sha1 per setting, into
# results/kernels/HOST.txt (sha1, setting, seconds). Run it on hosts of two vendors at the same commit and
# compare: a setting whose hash is equal on both gives one set of numbers on both. research/pages.py
# makes docs/performance.md's table from every file there. ~4 min on 2 cores.
#   bash research/kernels.sh HOST       # HOST names the CPU, e.g. amd-epyc-avx2 or intel-xeon-avx512
set -euo pipefail
cd "$(dirname "$0")/.."
host=${1:?name this host, e.g. amd-epyc-avx2}
out=runs/kernels; mkdir -p $out results/kernels
python explore.py --env shop --split train --expert --limit 200 --out $out/expert.jsonl > /dev/null
file=results/kernels/$host.txt
echo "# $(python -c "import sys; sys.path.insert(0, '.'); from research.pages import cpu_kind; print(cpu_kind())"), $(python -c "import os; print(os.cpu_count())") cores (sha1  setting  seconds)" > $file.part
pinned="ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2"
run() { name=$1; shift
  start=$(date +%s.%N)
  env OMP_NUM_THREADS=2 "$@" python sft.py --model tiny --data $out/expert.jsonl --tiny-layers 2 --epochs 1 \
    --batch-size 4 --out $out/$name > $out/$name.log 2>&1
  seconds=$(python -c "print(round($(date +%s.%N) - $start, 1))")
  echo "$(sha1sum < $out/$name/model.safetensors | cut -d' ' -f1)  $name  $seconds" >> $file.part; }
run all $pinned
run all+cbwr-avx2 $pinned MKL_CBWR=AVX2
run all+cbwr-avx2-strict $pinned MKL_CBWR=AVX2,STRICT
run all+cbwr-compatible $pinned MKL_CBWR=COMPATIBLE
run all-1-thread $pinned OMP_NUM_THREADS=1
run all-4-threads $pinned OMP_NUM_THREADS=4
run aten ATEN_CPU_CAPABILITY=avx2
run aten-default ATEN_CPU_CAPABILITY=default
run none
mv $file.part $file
