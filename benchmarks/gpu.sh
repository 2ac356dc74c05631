#!/usr/bin/env bash
# The GPU measurements of one session on the lent CUDA machine. Each step has its own time limit,
# and steps run in the order given, so that one call fits the machine's 10-minute limit:
#   bash benchmarks/gpu.sh test metrics          # the suite on the GPU, then the metrics bench
#   bash benchmarks/gpu.sh ig cd sparsemax perturb
#   bash benchmarks/gpu.sh bench                 # every benchmark
# Each bench writes its JSON under $OUT after every table, so a step cut short keeps what it
# measured; the output goes to $OUT/bench.log and $OUT/pytest.log. Copy the JSON files into benchmarks/results/.
# That machine has no network: the peer libraries travel as wheels in .whl/ (see README.md,
# "GPU measurements"), installed here when the folder is there.
set -uo pipefail
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > /tmp/install.log 2>&1 || { tail -20 /tmp/install.log; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -m pip install --no-build-isolation --no-deps -q -e . >> /tmp/install.log 2>&1; then
  tail -20 /tmp/install.log
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
steps=" ${*:-bench} "
steps=${steps// bench / metrics ig cd cdep sparsemax perturb shap agg sop iba }
for step in $steps; do
  case "$step" in
    install) continue ;;
    test)
      workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8" || echo "")
      timeout 420 python3 -m pytest tests -q --durations=15 -p no:cacheprovider $workers -rfE > "$out/pytest.log" 2>&1
      echo "pytest: exit $?"
      tail -25 "$out/pytest.log"
      continue ;;
    metrics) limit=300 ;; ig) limit=300 ;; cd) limit=90 ;; sparsemax) limit=60 ;; perturb) limit=50 ;; cdep) limit=60 ;; shap) limit=120 ;; agg) limit=240 ;;
    sop) limit=180 ;; iba) limit=240 ;;
    *) echo "usage: bash benchmarks/gpu.sh [install|test|bench|metrics|ig|cd|cdep|sparsemax|perturb|shap|agg|sop|iba]..." >&2; exit 2 ;;
  esac
  echo "== fastattr bench $step" >> "$out/bench.log"
  timeout "$limit" fastattr bench "$step" --repeat 3 --out "$out" >> "$out/bench.log" 2>&1
  echo "bench $step: exit $? (log: bench.log)"
done
