"""ImageBind's text tokenizer: upstream ``SimpleTokenizer`` ids (the CLIP byte-level BPE), exactly.

The pipeline is upstream's (reference README, item 11): ``ftfy.fix_text``, ``html.unescape``
twice, strip, whitespace runs collapsed to one space, lower-case, split with the CLIP regex,
byte-level BPE with the CLIP merges, ``<|startoftext|>`` (49406) first, at most 76 tokens then
``<|endoftext|>`` (49407), zeros up to 77. The end token is the largest id, which is why the text
head can find it with ``tokens.argmax(-1)``.

Dependencies are the optional extra ``mvbind[text]`` (ftfy, regex) plus the vocabulary file
``bpe_simple_vocab_16e6.txt.gz``, taken from the ``open_clip_torch`` wheel rather than copied into
this repository. That wheel is installed with ``--no-deps``: it requires torchvision and timm,
and torchvision pins one exact torch release, so a plain install can replace mvbind's torch (a
CPU build becomes a multi-GB CUDA one). Only the data file is read; ``open_clip`` itself is never
imported (its package folder is found with ``importlib.util.find_spec``, which runs no code), and
the file's content is checked against the CLIP vocabulary's sha256 so that a different file can
never give silently different ids. Missing pieces are one-line :class:`MvbindError` s naming the
install command.

Nothing here imports torch: ids come back as a numpy ``int64`` array of shape (N, 77).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import html
import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mvbind.errors import MvbindError, reason

CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
SOT_TOKEN = 49406  # <|startoftext|>
EOT_TOKEN = 49407  # <|endoftext|>

# The vocabulary's home. The pin is for reproducible installs (scripts/setup.sh installs exactly
# this; tests/test_tokenizer.py keeps the two in step); any release shipping the same file works.
VOCAB_DISTRIBUTION = "open_clip_torch==3.3.0"
VOCAB_PACKAGE = "open_clip"  # the import name inside that distribution; never imported
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8"  # of the gunzipped text
INSTALL_HINT = f"pip install 'mvbind[text]' && pip install --no-deps {VOCAB_DISTRIBUTION}"

# Upstream reads lines 1 .. 48894 of the merges file (line 0 is a version header): 49152 ids in
# all = 256 bytes + 256 bytes with "</w>" + 48894 merges + 2 special tokens (the embedding has
# 49408 rows; the top 256 ids are never produced).
_NUM_MERGES = 49152 - 256 - 2
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """Token ids (N, context_length) int64 of each text, as upstream's ``load_and_transform_text``."""
    if isinstance(texts, str):
        texts = [texts]
    out = np.zeros((len(texts), context_length), dtype=np.int64)
    for row, text in zip(out, texts):
        ids = [SOT_TOKEN, *encode(text)][: context_length - 1] + [EOT_TOKEN]
        row[: len(ids)] = ids
    return out


def encode(text: str) -> list[int]:
    """The BPE ids of one text, without the start/end tokens and without truncation."""
    ftfy = _text_modules()[0]
    whitespace, split = _patterns()
    encoder = _vocabulary()[0]
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    # The regex module's \s, as upstream (str.split() would also split on U+001C..U+001F).
    text = whitespace.sub(" ", text).strip().lower()
    ids: list[int] = []
    for word in split.findall(text):
        ids.extend(encoder[piece] for piece in _bpe(word).split(" "))
    return ids


@functools.lru_cache(maxsize=1 << 16)
def _bpe(word: str) -> str:
    """Merge the byte symbols of one pre-token by merge rank; the pieces joined by spaces.

    Cached per word, like upstream's per-tokenizer cache (bounded here: it lives in the process).
    """
    if word in ("<|startoftext|>", "<|endoftext|>"):
        return word
    byte_to_char = _bytes_to_unicode()
    symbols = [byte_to_char[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    ranks = _vocabulary()[1]
    while len(symbols) > 1:
        pairs = set(zip(symbols, symbols[1:]))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        first, second = best
        merged: list[str] = []
        i = 0
        while i < len(symbols):  # merge every non-overlapping occurrence, left to right
            if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return " ".join(symbols)


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (no whitespace/controls)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[dict[str, int], dict[tuple[str, ...], int]]:
    """(piece -> id, merge pair -> rank), read from the vocabulary file once per process."""
    lines = _vocab_text().split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]  # pairs: the file's digest was checked
    base = list(_bytes_to_unicode().values())
    pieces = [*base, *(c + "</w>" for c in base), *("".join(m) for m in merges), "<|startoftext|>", "<|endoftext|>"]
    return {p: i for i, p in enumerate(pieces)}, {m: i for i, m in enumerate(merges)}


def _vocab_text() -> str:
    path = _vocab_path()
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise MvbindError(
            f"cannot read CLIP BPE vocabulary {path} ({reason(exc)}): reinstall with {INSTALL_HINT}"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        raise MvbindError(
            f"{path} is not CLIP's BPE vocabulary (sha256 {digest[:12]}…, expected {VOCAB_SHA256[:12]}…): "
            f"reinstall with {INSTALL_HINT}"
        )
    return data.decode("utf-8")


def _vocab_path() -> Path:
    """The vocabulary file inside the installed open_clip package folder (found, not imported)."""
    try:
        spec = importlib.util.find_spec(VOCAB_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    if folders:
        found = f"the installed {VOCAB_PACKAGE} package has no {VOCAB_FILE}"
    else:
        found = f"{VOCAB_DISTRIBUTION} is not installed"
    raise MvbindError(f"the text tokenizer needs CLIP's BPE vocabulary ({found}): {INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def _patterns() -> tuple[Any, Any]:
    """(whitespace runs, CLIP pre-token split), compiled with the regex module (for \\p{L}, \\p{N})."""
    regex = _text_modules()[1]
    return regex.compile(r"\s+"), regex.compile(_SPLIT, regex.IGNORECASE)


def _text_modules() -> tuple[ModuleType, ModuleType]:
    """ftfy and regex, imported on first use so that mvbind without the text extra still imports."""
    modules = []
    for name in ("ftfy", "regex"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            raise MvbindError(
                f"the text tokenizer needs the {name!r} package (not installed): {INSTALL_HINT}"
            ) from None
    return modules[0], modules[1]
