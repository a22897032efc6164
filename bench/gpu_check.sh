#!/usr/bin/env bash
# The CUDA path, end to end, on a lent GPU machine with no internet (BENCHMARKS.md "GPU"):
#   1. bench/bench_gpu.py on real Fashion-MNIST: supernet training throughput of the 'mnist' space at
#      batch 128 and 512, float32 and AMP (what configs/fashion-mnist-gpu.yaml trains);
#   2. the main job, `nasctl search --device cuda` (supernet, NSGA-II, final attack, fine-tune stage);
#   3. configs/fashion-mnist-gpu.yaml with its stages cut short (2 supernet epochs, 1 generation, 2
#      members fine-tuned for 1 epoch), whose per-stage times scale the full recipe's wall time.
# Usage: [OUT=DIR] [SKIP_BENCH=1] bash bench/gpu_check.sh   (OUT default: bench/cache/gpu_out)
#   Optional, both git-ignored: wheels for packages the GPU image lacks (pymoo and its needs) under .whl/,
#   and Fashion-MNIST's four .gz files under .fmnist/ (else the data set's own default: Debian's files).
# Everything it writes stays under bench/cache/ (the runs, the package shim) unless OUT says otherwise.
# The GPU image has torch but not pymoo and this package: both go on PYTHONPATH, nothing is installed
# system-wide. Every step has its own time limit so a slow one still leaves the others' results.
set -uo pipefail
CACHE="$PWD/bench/cache"
OUT="${OUT:-$CACHE/gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1  # no checkout folder shadowing the package shim
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$CACHE/gpu_site" \
    .whl/*.whl
fi
# the product layout (nas/, export/, ... installed under nasctl.*) without pip: a package folder of links
PKG="$CACHE/gpu_pkg"
rm -rf "$PKG" && mkdir -p "$PKG/nasctl" && cp -r nasctl/. "$PKG/nasctl/"
for d in nas export profiling android_bench; do ln -s "$PWD/$d" "$PKG/nasctl/$d"; done
export PYTHONPATH="$PKG:$CACHE/gpu_site:${PYTHONPATH:-}"
FM=()  # Fashion-MNIST: the carried .fmnist/ when there is one, else the loader's default
[ -d .fmnist ] && FM=(--data-dir "$PWD/.fmnist")
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, pymoo; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'pymoo', pymoo.__version__)"; nproc; } \
  2>&1 | tee "$OUT/env.txt"

timed() { local t0=$SECONDS; "$@"; local rc=$?; echo "wall $((SECONDS - t0)) s (exit $rc)"; }
show() { tr '\r' '\n' < "$1" | grep -v "it/s\]\|gen/s\]\|s/it\]\|^ *$" | tail -${2:-30}; }

[ -n "${SKIP_BENCH:-}" ] || timed timeout 150 python3 bench/bench_gpu.py --device cuda --workloads fmnist "${FM[@]}" \
  --images 8192 --epochs 2 --batch-size 128,512 --out "$OUT/gpu_fmnist.json" 2>&1 | tee "$OUT/bench_gpu.log"

R="$CACHE/gpu_runs"
timed timeout 240 \
  python3 -m nasctl search --device cuda --run-root "$R" --name main > "$OUT/mainjob.log" 2>&1
show "$OUT/mainjob.log" 40
cp "$(ls -d $R/search/*-main | head -1)/pareto.json" "$OUT/pareto_main.json" 2>/dev/null

timed timeout 250 \
  python3 -m nasctl search --dataset fashion-mnist --config configs/fashion-mnist-gpu.yaml "${FM[@]}" \
  --device cuda --epochs 2 --generations 1 --finetune-members 2 --finetune-epochs 1 \
  --run-root "$R" --name fmnist > "$OUT/fmnist_short.log" 2>&1
show "$OUT/fmnist_short.log" 40
cp "$(ls -d $R/search/*-fmnist | head -1)/pareto.json" "$OUT/pareto_fmnist_short.json" 2>/dev/null
echo "gpu_check done"
