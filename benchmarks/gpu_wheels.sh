#!/usr/bin/env bash
# What benchmarks/gpu_check.sh carries to the bare GPU machine (Python 3.12, torch, transformers, accelerate,
# peft, sentence-transformers, pytest; no network), prepared on a machine with PyPI access:
#   .whl/                                  the wheels it lacks: gguf, and trl==1.12.0 with what TRL needs and
#                                          that machine does not have (datasets and its pyarrow, pandas, ...)
#   benchmarks/.gpu/smollm2-tokenizer/     SmolLM2's tokenizer files (the 135M model itself is not carried:
#                                          the check builds models from configs with random weights)
# then run there with carry [".whl", "benchmarks/.gpu"] (64 MiB in all with the working tree).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
mkdir -p .whl benchmarks/.gpu
"$PIP" download -q --only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
    "gguf==0.19.0" "trl==1.12.0" datasets pyarrow pandas dill multiprocess xxhash python-dateutil pytz tzdata
PYTHONPATH="$ROOT/src" "$PYTHON" - <<'PY'
from pathlib import Path
from transformers import AutoTokenizer
from rlp_align.models import resolve_model

folder = Path("benchmarks/.gpu/smollm2-tokenizer")
AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct")).save_pretrained(folder)
print("tokenizer ->", folder)
PY
total=$(du -cb .whl benchmarks/.gpu | tail -1 | cut -f1)
echo "carried: $((total / 1048576)) MiB in .whl and benchmarks/.gpu (the limit is 64 MiB with the working tree)"
if (( total > 58 * 1048576 )); then
    echo "too large to carry: drop the TRL comparison's wheels (trl, datasets, pyarrow, pandas) and rerun" >&2
    exit 1
fi
