"""ImageBind's text tokenizer against upstream's ids (fixtures/text/tokens.npz), and its install errors.

tokens.npz is upstream ``imagebind.data.load_and_transform_text`` on eight strings chosen for the
pipeline's corners: whitespace runs, HTML entities (unescaped twice), contractions and digits,
accents + CJK + emoji (byte-level BPE), the empty string and a text cut at 76 tokens.
"""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvbind.pipeline.encoders.imagebind import tokenizer
from mvbind.pipeline.encoders.imagebind.tokenizer import (
    CONTEXT_LENGTH,
    EOT_TOKEN,
    INSTALL_HINT,
    SOT_TOKEN,
    VOCAB_DISTRIBUTION,
    VOCAB_FILE,
    encode,
    tokenize,
)

ROOT = Path(__file__).resolve().parents[1]
TEXT_FIXTURES = Path(__file__).parent / "fixtures" / "text"
REFERENCE = np.load(TEXT_FIXTURES / "tokens.npz")
TEXTS: list[str] = json.loads(bytes(REFERENCE["texts_json"]))


@pytest.mark.parametrize("row", range(len(TEXTS)), ids=[t[:24] or "empty" for t in TEXTS])
def test_ids_match_upstream(row: int) -> None:
    got = tokenize(TEXTS[row])
    assert got.shape == (1, CONTEXT_LENGTH)
    np.testing.assert_array_equal(got[0], REFERENCE["tokens"][row])


def test_batch_shape_and_dtype() -> None:
    got = tokenize(TEXTS)
    assert got.shape == (8, 77) and got.dtype == np.int64
    np.testing.assert_array_equal(got, REFERENCE["tokens"])


def test_empty_and_blank_text_are_start_then_end() -> None:
    want = np.zeros(77, dtype=np.int64)
    want[:2] = [SOT_TOKEN, EOT_TOKEN]
    for text in ("", "   \t\n ", "&nbsp;"):  # stripped to nothing (the entity after unescaping)
        np.testing.assert_array_equal(tokenize(text)[0], want)


def test_long_text_is_cut_to_76_tokens_then_end() -> None:
    words = " ".join(["beach"] * 80)  # "beach" is one token
    ids = encode(words)
    assert len(ids) == 80 and len(set(ids)) == 1
    row = tokenize(words)[0]
    assert row[0] == SOT_TOKEN and row[76] == EOT_TOKEN
    np.testing.assert_array_equal(row[1:76], ids[:75])
    assert int(row.argmax()) == 76  # where the text head will read
    # 75 words fill the context exactly: nothing is cut, no padding left.
    exact = tokenize(" ".join(["beach"] * 75))[0]
    np.testing.assert_array_equal(exact, row)
    shorter = tokenize(" ".join(["beach"] * 74))[0]
    assert shorter[75] == EOT_TOKEN and shorter[76] == 0


def test_case_whitespace_and_entities_are_normalised() -> None:
    np.testing.assert_array_equal(tokenize("Calm   PIANO\n"), tokenize("calm piano"))
    np.testing.assert_array_equal(tokenize("&amp;lt;3"), tokenize("<3"))  # unescaped twice


def test_vocabulary_is_read_once() -> None:
    tokenize(["first", "second text"])
    tokenize("third")
    info = tokenizer._vocabulary.cache_info()
    assert info.misses == 1 and info.hits >= 2


def test_setup_installs_the_pinned_vocabulary_package() -> None:
    # The error message's install line and scripts/setup.sh must name the same release.
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f"--no-deps {VOCAB_DISTRIBUTION}" in setup
    assert f"--no-deps {VOCAB_DISTRIBUTION}" in INSTALL_HINT
    extras = re.search(r'^text = \[(.*?)\]', (ROOT / "pyproject.toml").read_text(), re.M | re.S)
    assert extras and "ftfy" in extras.group(1) and "regex" in extras.group(1)


# ---------------------------------------------------------------------------- install errors

def _tokenize_in_subprocess(prelude: str, env_path: Path | None = None) -> str:
    """Run tokenize("x") in a fresh interpreter after `prelude`; the one-line error it raises."""
    code = (
        f"import sys\n{prelude}\n"
        "from mvbind.errors import MvbindError\n"
        "from mvbind.pipeline.encoders.imagebind.tokenizer import tokenize\n"
        "try:\n    tokenize('x')\nexcept MvbindError as err:\n    print(err)\nelse:\n    print('no error')\n"
    )
    if env_path is not None:
        code = f"import sys; sys.path.insert(0, {str(env_path)!r})\n" + code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.rstrip("\n")


@pytest.mark.parametrize("module", ["ftfy", "regex"])
def test_missing_text_extra_is_one_line_error(module: str) -> None:
    msg = _tokenize_in_subprocess(f"sys.modules[{module!r}] = None  # import {module} fails")
    assert "\n" not in msg
    assert f"needs the '{module}' package" in msg and INSTALL_HINT in msg


def test_missing_vocabulary_package_is_one_line_error() -> None:
    msg = _tokenize_in_subprocess("sys.modules['open_clip'] = None  # not findable")
    assert "\n" not in msg
    assert f"{VOCAB_DISTRIBUTION} is not installed" in msg and INSTALL_HINT in msg


def test_a_different_vocabulary_file_is_refused(tmp_path: Path) -> None:
    # An open_clip package folder earlier on the path whose file is not CLIP's vocabulary.
    fake = tmp_path / "open_clip"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('never imported')\n")
    (fake / VOCAB_FILE).write_bytes(gzip.compress(b"#version: 0.2\ni n\n"))
    msg = _tokenize_in_subprocess("", env_path=tmp_path)
    assert "\n" not in msg
    assert "is not CLIP's BPE vocabulary" in msg and str(fake / VOCAB_FILE) in msg
