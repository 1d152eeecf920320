import json
import os

import pytest

from mvbind.errors import ConfigError
from mvbind.pipeline.media.inputs import list_inputs


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_is_recursive_sorted_and_filtered(tmp_path):
    for name in ["b.mp4", "a.MOV", "sub/c.mkv", "sub/deeper/d.webm", "e.avi", "f.m4v", "g.ogv",
                 "notes.txt", "song.mp3", ".hidden.mp4", ".git/x.mp4"]:
        touch(tmp_path / name)
    touch(tmp_path / os.fsdecode(b"caf\xe9.mp4"))
    paths = [os.path.relpath(i.path, tmp_path) for i in list_inputs(tmp_path)]
    assert paths == sorted(paths, key=os.fsencode)
    assert set(paths) == {"a.MOV", "b.mp4", "e.avi", "f.m4v", "g.ogv", "sub/c.mkv", "sub/deeper/d.webm",
                          os.fsdecode(b"caf\xe9.mp4")}


def test_csv_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("path,id,music_id,split\nv/a.mp4,a,m1,train\n/abs/b.mp4,,m1,TEST\nc.mp4,,,\n")
    items = list_inputs(tmp_path / "m.csv")
    assert [i.path for i in items] == [str(tmp_path / "v/a.mp4"), "/abs/b.mp4", str(tmp_path / "c.mp4")]
    assert [(i.id, i.music_id, i.split) for i in items] == [("a", "m1", "train"), ("", "m1", "test"), ("", "", "")]


def test_jsonl_manifest(tmp_path):
    lines = [{"path": "a.mp4", "music_id": 7}, {"path": "b.mp4", "split": "val"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    items = list_inputs(tmp_path / "m.jsonl")
    got = [(os.path.basename(i.path), i.music_id, i.split) for i in items]
    assert got == [("a.mp4", "7", ""), ("b.mp4", "", "val")]


@pytest.mark.parametrize("name,text,message", [
    ("m.csv", "file_name,id\nx.mp4,1\n", "no 'path' column"),
    ("m.csv", "path,split\na.mp4,holdout\n", "line 2: split 'holdout'"),
    ("m.csv", "path,id\n,3\n", "line 2: no path"),
    ("m.jsonl", '{"path": "a.mp4"}\nnot json\n', "line 2: not JSON"),
    ("m.jsonl", '["a.mp4"]\n', "line 1: expected a JSON object"),
    ("m.txt", "a.mp4\n", "must end in .csv or .jsonl"),
])
def test_bad_manifests_name_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        list_inputs(tmp_path / name)
    assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value)


def test_missing_source(tmp_path):
    with pytest.raises(ConfigError, match="no such folder or manifest"):
        list_inputs(tmp_path / "nope")


def test_a_csv_with_a_byte_order_mark_reads_like_any_other(tmp_path):
    # Spreadsheet programs save CSV as UTF-8 with a BOM; the first column is still called "path".
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "m.csv").write_bytes("\ufeffpath,music_id\na.mp4,7\n".encode())
    items = list_inputs(tmp_path / "m.csv")
    assert [(os.path.basename(i.path), i.music_id) for i in items] == [("a.mp4", "7")]


def test_a_manifest_that_is_not_utf8_is_one_line_naming_file_and_line(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"path\nok.mp4\ncaf\xe9.mp4\n")
    with pytest.raises(ConfigError, match=r"m\.csv line 3: not UTF-8 text \(byte 0xe9\); save the manifest as UTF-8"):
        list_inputs(tmp_path / "m.csv")


@pytest.mark.parametrize("name,content", [("m.csv", "path\n"), ("m.jsonl", "\n\n"), ("m.csv", "")])
def test_an_empty_manifest_is_an_error_whatever_its_format(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError) as err:
        list_inputs(tmp_path / name)
    assert "\n" not in str(err.value) and name in str(err.value)
