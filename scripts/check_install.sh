#!/usr/bin/env bash
# A non-editable `pip install .` into a fresh venv, used from a folder outside the checkout: the
# console script, the shipped pipeline.toml, the README's notebook example on a tiny demo, and the
# import-layer contracts (import-linter reads the installed package: mvbind.pipeline, .stages and
# .cache live in the design card's top-level folders, which only an install assembles into one tree).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi
VENV="$ROOT/build/fresh-venv"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${TORCH_SPEC:-torch==2.13.0}"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "$ROOT[serve]" "import-linter==2.17" httpx2

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
"$VENV/bin/mvbind" --help >/dev/null
"$VENV/bin/mvbind" demo --help >/dev/null
"$VENV/bin/mvbind" extract --help >/dev/null
"$VENV/bin/python" -c "import mvbind; c = mvbind.load_config(); assert c.audio.sample_rate == 16000, c"
echo "install: console script and shipped settings work from $WORK"

# The README's notebook example, on a tiny demo made by the installed package.
MVBIND_HOME="$WORK/home" "$VENV/bin/mvbind" demo demo --videos 16 --library-tracks 1 --seed 3 --workers 1 \
  --quiet > demo.log
"$VENV/bin/python" - "$ROOT/README.md" <<'PY'
import re, sys
block = re.search(r"<!-- notebook-example[^>]*-->\s*```python\n(.*?)```", open(sys.argv[1]).read(), re.S)
exec(compile(block.group(1), "README.md", "exec"), {})
PY
echo "install: the README's notebook example ran from $WORK"

# The page ships inside the package: the demo's printed serve settings answer with it, installed.
"$VENV/bin/python" - <<'PY'
from pathlib import Path
from starlette.testclient import TestClient
from mvbind.pipeline.config import load_config
from mvbind.stages.serve import make_app
with TestClient(make_app(load_config(Path("demo/pipeline.toml")), run="demo", library="demo", progress=False)) as c:
    page, js = c.get("/"), c.get("/static/app.js")
    assert page.status_code == 200 and "mvbind" in page.text and js.status_code == 200, (page, js)
PY
echo "install: mvbind serve's page is in the installed package"

"$VENV/bin/lint-imports" --no-cache "$ROOT/pyproject.toml"
