#!/usr/bin/env bash
# Captum's own tests (tests/attr, tests/metrics at its head of 2025-10-02) run against Captum and
# with the imports of the classes under test swapped to fastattr.integrations.captum.
# Usage: bash benchmarks/captum_suite.sh [captum-git-dir]
#   The Captum repository: the argument, else $CAPTUM_REPO, else a clone of
#   https://github.com/pytorch/captum into ${XDG_CACHE_HOME:-~/.cache}/fastattr/captum.
# Writes benchmarks/results/captum_suite.json (per file: passed / failed / total both ways, the
# ratio) and benchmarks/results/captum_suite_failures.txt (tests that pass only against Captum).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=${1:-${CAPTUM_REPO:-}}
if [[ -z "$repo" ]]; then
  repo=${XDG_CACHE_HOME:-$HOME/.cache}/fastattr/captum.git
  [[ -d "$repo" ]] || git clone --bare --quiet https://github.com/pytorch/captum "$repo"
fi
[[ -d "$repo/.git" ]] && repo=$repo/.git
# The last commit on or before 2025-10-02 (faac08773131888714b15709b28494ebeea7f6eb).
commit=$(git --git-dir="$repo" rev-list -1 --before="2025-10-02 23:59:59 -0700" HEAD)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python "$here/captum_suite.py" --repo "$repo" --commit "$commit" \
  --out "$here/results/captum_suite.json" --failures "$here/results/captum_suite_failures.txt"
