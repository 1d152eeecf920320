#!/usr/bin/env bash
# The main job on the bundled default: set up, make a few short sample videos, extract their
# ImageBind embeddings (a small randomly initialised ImageBind, so it runs on any CPU offline)
# into a feature cache under ./demo, run it again to show the cache is reused, print cache info.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MVBIND_HOME="${MVBIND_HOME:-$PWD/demo}"
.venv/bin/python -m pipeline.synth demo/videos
.venv/bin/python cli.py extract demo/videos --arch tiny --weights random
.venv/bin/python cli.py extract demo/videos --arch tiny --weights random
.venv/bin/python cli.py cache info
