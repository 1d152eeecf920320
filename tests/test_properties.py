"""Property-based tests (Hypothesis) at the two text interfaces users type into: manifests and
`--set` overrides. Whatever the input, the outcome is a result or one line naming the problem,
never a traceback."""

import csv
import dataclasses
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mvbind.errors import ConfigError
from mvbind.pipeline.config import load_config
from mvbind.pipeline.config.schema import SECTIONS
from mvbind.pipeline.media.inputs import list_inputs

# derandomize: the same examples on every machine and run, so CI is reproducible (a failure found
# once is kept below as an explicit @example).
PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Paths as people write them: spaces, commas, quotes, accents, CJK, emoji, relative and absolute.
odd_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   max_size=24)
paths = st.one_of(odd_text, st.sampled_from(["a.mp4", "sub/b c.mp4", "/abs/x.mp4", "café,1.mp4", "视频.mp4",
                                             "🎵.mp4", "\"quoted\".mp4", " padded .mp4", ""]))
columns = st.lists(st.sampled_from(["path", "Path", " file ", "video", "id", "music_id", "split", "junk", ""]),
                   min_size=0, max_size=5)
cells = st.one_of(paths, st.sampled_from(["train", "val", "test", "TEST", "dev", "", "7"]), odd_text)


def _one_line_or_items(source: Path) -> None:
    try:
        items = list_inputs(source)
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message and str(source.name) in message, message
        return
    assert items and all(isinstance(i.path, str) and i.path for i in items)


@PROPERTY
@example(header=["path"], rows=[["~0"]], encoding="utf-8", blank_lines=False, newline="\n")  # ~user unknown
@given(header=columns, rows=st.lists(st.lists(cells, max_size=6), max_size=6),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]),
       blank_lines=st.booleans(), newline=st.sampled_from(["\n", "\r\n"]))
def test_any_csv_manifest_gives_inputs_or_one_line(header, rows, encoding, blank_lines, newline):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=newline)
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
        if blank_lines:
            buf.write(newline)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "manifest.csv"
        source.write_bytes(buf.getvalue().encode(encoding, errors="replace"))
        _one_line_or_items(source)


json_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), odd_text,
                        st.lists(st.integers(), max_size=2))


@PROPERTY
@given(records=st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["path", "id", "music_id", "split", "PATH", "x"]), json_values, max_size=4),
    json_values), max_size=5),
    garbage=st.sampled_from(["", "{", "not json", "[1, 2]", "\ufeff", "\n\n"]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1"]))
def test_any_jsonl_manifest_gives_inputs_or_one_line(records, garbage, encoding):
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n" + garbage
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "manifest.jsonl"
        source.write_bytes(text.encode(encoding, errors="replace"))
        _one_line_or_items(source)


KEYS = [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
values = st.one_of(odd_text, st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr),
                   st.sampled_from(["true", "false", "yes", "0", "1", "-1", "1e309", "nan", "[1,2,3]", "[", "",
                                    "0.5", "1,2,3", "huge", "random", "cpu", "cuda:7"]))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(["nosection.key", "video", ".", "video.", "x.y.z",
                                                          "extract.wokers"]), odd_text)


@PROPERTY
@given(overrides=st.dictionaries(keys, values, max_size=3))
def test_any_set_override_loads_or_is_one_line_naming_the_key(overrides):
    try:
        config = load_config(overrides=overrides)
    except ConfigError as err:
        message = str(err)
        assert message and "\n" not in message, message
        named = [k for k in overrides if k.isprintable() and k.strip() and not any(c.isspace() for c in k)]
        assert "--set" in message or any(k in message or k.split(".")[-1] in message for k in named), \
            (overrides, message)
        return
    for key in overrides:  # accepted: the value is there, typed
        section, _, name = key.partition(".")
        assert hasattr(getattr(config, section), name)
