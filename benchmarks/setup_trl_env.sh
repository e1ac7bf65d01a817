#!/usr/bin/env bash
# A separate virtual environment with TRL 1.12 for the speed comparison (benchmarks/speed.py).
#
#   benchmarks/setup_trl_env.sh            # creates benchmarks/.venv-trl (about a minute)
#
# TRL 1.12.0 is the last release with `trl.experimental.ppo` (it is gone from 1.13). torch is pinned and
# installed FIRST: an unpinned torch would pull a multi-GB CUDA build. transformers is pinned to the version
# of our own .venv, so both frameworks run the same model code.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/benchmarks/.venv-trl"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_VERSION="2.13.0"
TRL_VERSION="1.12.0"

if [[ -x "$ROOT/.venv/bin/python" ]]; then
    TRANSFORMERS_VERSION="$("$ROOT/.venv/bin/python" -c 'import transformers; print(transformers.__version__)')"
else
    TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.23.0}"
fi

echo "creating $VENV (python $("$PYTHON" --version 2>&1), torch $TORCH_VERSION, trl $TRL_VERSION," \
     "transformers $TRANSFORMERS_VERSION)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
"$VENV/bin/pip" install -q "trl==$TRL_VERSION" "transformers==$TRANSFORMERS_VERSION" "torch==$TORCH_VERSION"
"$VENV/bin/python" - <<'EOF'
import torch, transformers, trl
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401  (fails loudly if PPO is missing)
print(f"ok: torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")
EOF
