#!/usr/bin/env bash
# One-shot check of vivi on one GPU (bench/gpu_check.py): the CUDA tests, synth + ingest at 224 px,
# VIVI-Ex(4) step speed with and without torch.compile against a supervised step, the loader with
# 14 workers, torchrun (NCCL, one process), and the export into timm. About 8 minutes on one H100.
#
#   bash bench/gpu_check.sh [--dry-run] [--out DIR] [--steps N] [--only STEP ...]
#
# Writes gpu_check.json, gpu_check.txt and logs/ to --out (default $OUT, else ./gpu_check); exits 1
# when a step failed. --dry-run: the same steps on the CPU at toy sizes (tests/test_gpu_check.py).
#
# The machine needs python3 with torch, numpy, OpenCV and safetensors (timm for the export
# comparison); vivi runs from this checkout (PYTHONPATH), not installed. Wheels in .whl/ (written
# by bench/gpu_wheels.sh: PyAV, kornia, pytest, ...) are installed into /tmp/site first, with no
# network (not for --dry-run, which uses the interpreter's own packages). PYTHON=... picks another
# interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ " $* " != *" --dry-run "* ]] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the check keeps its own time budget (470 s, dry run 150 s); this bounds the driver itself
exec timeout -k 10 "${GPU_CHECK_LIMIT_S:-560}" "$PYTHON" bench/gpu_check.py "$@"
