#!/usr/bin/env bash
# The GPU measurements of one session on the lent CUDA machine, in two calls that each fit its
# 10-minute limit:
#   bash benchmarks/gpu.sh bench   # install, then every benchmark; each writes its JSON under $OUT
#                                  # as soon as it finishes, so a slow one loses only itself
#   bash benchmarks/gpu.sh test    # install, then the whole test suite on the GPU
# Copy the JSON files it leaves under $OUT into benchmarks/results/.
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
if ! pip install --no-build-isolation --no-deps -q -e . > "$out/install.log" 2>&1; then
  tail -20 "$out/install.log"
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
case "${1:-bench}" in
  bench)
    for spec in metrics:200 ig:130 cd:90 sparsemax:60 perturb:50; do
      name=${spec%%:*}
      timeout "${spec##*:}" fastattr bench "$name" --repeat 3 --out "$out" > "$out/bench-$name.log" 2>&1
      echo "bench $name: exit $? (log: bench-$name.log)"
    done ;;
  test)
    timeout 520 python -m pytest tests -q -p no:cacheprovider > "$out/pytest.log" 2>&1
    echo "pytest: exit $?"
    tail -15 "$out/pytest.log" ;;
  *)
    echo "usage: bash benchmarks/gpu.sh bench|test" >&2
    exit 2 ;;
esac
