#!/usr/bin/env bash
# The CUDA path, end to end, on a lent GPU machine with no internet (BENCHMARKS.md "GPU"):
#   1. bench/bench_gpu.py: training throughput, float32 vs AMP, digits and a CIFAR-shaped workload;
#   2. nasctl train --device cuda --amp (the default digits supernet, AMP), then a search on it;
#   3. the main job, nasctl search with no arguments but --device cuda.
# Usage: OUT=/some/dir bash bench/gpu_check.sh   (wheels for missing packages under .whl/, if any)
# The GPU image has torch but not pymoo and this package: both go on PYTHONPATH, nothing is installed
# system-wide. Every step has its own time limit so a slow one still leaves the others' results.
set -uo pipefail
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1  # no checkout folder shadowing /tmp/pkg
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# the product layout (nas/, export/, ... installed under nasctl.*) without pip: a package folder of links
rm -rf /tmp/pkg && mkdir -p /tmp/pkg/nasctl && cp -r nasctl/. /tmp/pkg/nasctl/
for d in nas export profiling android_bench; do ln -s "$PWD/$d" "/tmp/pkg/nasctl/$d"; done
export PYTHONPATH="/tmp/pkg:/tmp/site:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, pymoo; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'pymoo', pymoo.__version__)"; nproc; } \
  2>&1 | tee "$OUT/env.txt"

timeout 200 python3 bench/bench_gpu.py --device cuda --out "$OUT/gpu.json" 2>&1 | tee "$OUT/bench_gpu.log"

timed() { local t0=$SECONDS; "$@"; local rc=$?; echo "wall $((SECONDS - t0)) s (exit $rc)"; }
show() { tr '\r' '\n' < "$1" | grep -v "it/s\]\|gen/s\]\|^ *$" | tail -45; }
R=/tmp/gpu_runs
timed timeout 150 \
  python3 -m nasctl train --device cuda --amp --run-root $R --name amp > "$OUT/train_amp.log" 2>&1; show "$OUT/train_amp.log"
SN=$(ls -d $R/train/*-amp | head -1)/supernet.pt
timed timeout 120 \
  python3 -m nasctl search --supernet "$SN" --device cuda --run-root $R --name amp > "$OUT/search_amp.log" 2>&1; show "$OUT/search_amp.log"
timed timeout 240 \
  python3 -m nasctl search --device cuda --run-root $R --name main > "$OUT/mainjob.log" 2>&1; show "$OUT/mainjob.log"
cp "$(ls -d $R/search/*-main | head -1)/pareto.json" "$OUT/pareto_main.json" 2>/dev/null
echo "gpu_check done"
