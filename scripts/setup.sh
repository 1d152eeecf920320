#!/usr/bin/env bash
# Create .venv with everything mvbind and its tests need. ffmpeg comes from the imageio-ffmpeg
# wheel and decoding from PyAV's bundled FFmpeg, so nothing is installed system-wide.
# TORCH_SPEC overrides the torch requirement (default: torch==2.13.0; on Linux x86-64 a plain
# PyPI install of that version is the CUDA build, so GPU machines can use the same line).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,serve,text,ray]'
# CLIP's BPE vocabulary for the text tokenizer: the file only, so no torchvision/timm (see pyproject's `text`).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps open_clip_torch==3.3.0
echo "mvbind: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
