#!/usr/bin/env bash
# The main job on the bundled default, offline on any CPU: set up, generate the seeded demo
# collection (short vertical videos whose visuals follow generated music, plus a library of
# longer tracks), then extract (signal encoder) → train → eval on the held-out test split →
# index the library → recommend tracks for held-out videos. Everything is written under ./demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MVBIND_HOME="${MVBIND_HOME:-$PWD/demo}"
.venv/bin/python cli.py demo demo "$@"
