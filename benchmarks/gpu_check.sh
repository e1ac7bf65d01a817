#!/usr/bin/env bash
# The prepared GPU check: one command, at most ~8 minutes on one H200 (see benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh             # on the GPU machine: writes $OUT/gpu.json (without $OUT:
#                                       # benchmarks/results/gpu.json); copy it to benchmarks/results/gpu.json
#   benchmarks/gpu_check.sh --dry-run   # the same phases on the CPU, tiny sizes, < 2 min ($OUT or a temp dir)
#
# Runs from the source tree on the machine's own torch. Missing small wheels (gguf; trl==1.12.0 and its
# missing dependencies, for the TRL comparison) are installed from a carried .whl/ folder into /tmp/site;
# benchmarks/gpu_wheels.sh fills .whl/ and copies the SmolLM2 tokenizer files to benchmarks/.gpu/. On a lent
# machine without git metadata, name the commit: RLP_COMMIT=$(git rev-parse HEAD) benchmarks/gpu_check.sh, with
# carry [".whl", "benchmarks/.gpu"] and a time limit of ~540 s (the check budgets 450 s for its phases); then
# copy the returned gpu.json to benchmarks/results/ and run benchmarks/readme_tables.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"  # after src and the machine's own packages: never shadows torch
fi
if [[ -z "${RLP_COMMIT:-}" ]]; then
    RLP_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)"
    export RLP_COMMIT
fi

if [[ "${1:-}" == "--dry-run" ]]; then
    shift
    out_dir="${OUT:-$(mktemp -d)}"
    exec "$PYTHON" benchmarks/gpu_check.py --dry-run --out "$out_dir/gpu.json" "$@"
fi
out_dir="${OUT:-$ROOT/benchmarks/results}"
exec "$PYTHON" benchmarks/gpu_check.py --out "$out_dir/gpu.json" "$@"
