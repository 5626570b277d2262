#!/usr/bin/env bash
# The chapter's GPU run (gpt2-medium shape, 935 examples, batch 8, 2 epochs):
# the baseline loop and ftlib's loop back to back on one CUDA GPU; prints a table
# and writes it to $OUT/gpu_check.txt when OUT is set. About 2-4 minutes.
# Needs only torch and tiktoken (the bundled data's token ids come from
# benchmarks/bundled-tokens.json where the tokenizer's files are missing).
#
#   bash benchmarks/gpu_check.sh                  # from anywhere in the checkout
#   bash benchmarks/gpu_check.sh --no-compile     # options: python benchmarks/gpu_check.py --help
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1
# a hard stop under 5 minutes, whatever happens inside
exec timeout --signal=INT --kill-after=10 285 "$PY" benchmarks/gpu_check.py "$@"
