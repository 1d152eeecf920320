"""What to extract: a folder of videos (recursive) or a CSV/JSONL manifest."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mvbind.errors import ConfigError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ogv")
AUDIO_EXTENSIONS = (".mp3", ".ogg", ".wav", ".flac", ".m4a", ".opus")
SPLITS = ("", "train", "val", "test")
# Accepted spellings of manifest columns.
COLUMNS = {
    "path": ("path", "file", "filename", "video"),
    "id": ("id", "video_id"),
    "music_id": ("music_id", "music id", "music", "track_id"),
    "split": ("split",),
}


@dataclass(frozen=True)
class InputItem:
    path: str
    id: str = ""
    music_id: str = ""
    split: str = ""


def list_inputs(source: str | Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[InputItem]:
    """Items from a folder (recursive, by extension, sorted) or a .csv/.jsonl manifest."""
    source = Path(source)
    if source.is_dir():
        return _scan_folder(source, extensions)
    if not source.exists():
        raise ConfigError(f"{source}: no such folder or manifest; pass a folder of videos or a .csv/.jsonl manifest")
    suffix = source.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ConfigError(f"{source}: not a folder or a manifest; manifests must end in .csv or .jsonl")
    try:
        items = _read_csv(source) if suffix == ".csv" else _read_jsonl(source)
    except UnicodeDecodeError as err:
        line = source.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(f"{source} line {line}: not UTF-8 text (byte 0x{err.object[err.start]:02x}); "
                          "save the manifest as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{source}: cannot read the manifest ({err.strerror or err})") from None
    if not items:
        raise ConfigError(f"{source}: the manifest lists no inputs; add one row per file (a 'path' column)")
    return items


def _scan_folder(root: Path, extensions: tuple[str, ...]) -> list[InputItem]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions:
                found.append(os.path.join(dirpath, name))
    return [InputItem(path=p) for p in sorted(found, key=os.fsencode)]


def _item(manifest: Path, where: str, record: dict) -> InputItem:
    lowered = {str(k).strip().lower(): v for k, v in record.items() if k is not None}
    values = {}
    for field, names in COLUMNS.items():
        values[field] = next((str(lowered[n]).strip() for n in names if lowered.get(n) not in (None, "")), "")
    if not values["path"]:
        raise ConfigError(f"{manifest} {where}: no path; every row needs a 'path' column")
    split = values["split"].lower()
    if split not in SPLITS:
        raise ConfigError(f"{manifest} {where}: split {values['split']!r}; use train, val, test or leave it empty")
    path = Path(values["path"])
    try:
        path = path.expanduser()
    except RuntimeError:  # "~name" of a user that does not exist: the path as written
        pass
    if not path.is_absolute():
        path = manifest.parent / path  # relative paths are relative to the manifest
    return InputItem(path=str(path), id=values["id"], music_id=values["music_id"], split=split)


def _read_csv(manifest: Path) -> list[InputItem]:
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not any(
            str(n).strip().lower() in COLUMNS["path"] for n in reader.fieldnames
        ):
            raise ConfigError(f"{manifest}: no 'path' column in the header; the first line must name the columns")
        return [_item(manifest, f"line {i}", row) for i, row in enumerate(reader, start=2)]


def _read_jsonl(manifest: Path) -> list[InputItem]:
    items = []
    with open(manifest, encoding="utf-8-sig") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                raise ConfigError(f"{manifest} line {i}: not JSON ({err.msg}); one object per line") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{manifest} line {i}: expected a JSON object with a 'path' key")
            items.append(_item(manifest, f"line {i}", record))
    return items
