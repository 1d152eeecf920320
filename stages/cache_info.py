"""`mvbind cache info` / `verify` / `status`: what the feature cache holds (namespaces, settings, items,
failures, bytes), whether every byte reads back, and where running extract jobs stand."""

from __future__ import annotations

import json
import os
import time

from mvbind.cache import FeatureCache, settings_label
from mvbind.cache.namespace import verify_namespace
from mvbind.cache.plan import namespace_plans
from mvbind.cache.progress import read_progress


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cache_info(cache_dir, prefix: str | None = None) -> list[dict]:
    """One dict per namespace (all, or those whose fingerprint starts with `prefix`)."""
    cache = FeatureCache(cache_dir)
    spaces = [cache.find(prefix)] if prefix else cache.namespaces()
    return [ns.info() for ns in spaces]


def format_info(infos: list[dict], cache_dir, verbose: bool = False) -> list[str]:
    if not infos:
        return [f"{cache_dir}: no namespaces yet (run `mvbind extract`)"]
    lines = [f"cache {cache_dir}: {len(infos)} namespace(s)"]
    for info in infos:
        s = info["settings"]
        enc = s.get("encoder", {})
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["created"]))
        label = settings_label(s)
        if isinstance(enc, dict) and "weights" in enc:
            label += f" weights={enc['weights']}"
        lines.append(
            f"{info['fingerprint'][:16]}  {label}  "
            f"items={info['items']} (no audio {info['items_without_audio']})  failures={info['failures']}  "
            f"shards={info['shards']}  {human_bytes(info['bytes'])}  created {created}"
        )
        shapes = s.get("shapes", {})
        if "imported" in s:  # features from elsewhere: no clip layout, the file they came from
            imp = s["imported"]
            source = info.get("note", {}).get("imported_from") or imp.get("name")
            lines.append(f"    imported from {source}: {imp.get('items')} items, audio {_shape(imp.get('audio'))}, "
                         f"video {_shape(imp.get('video'))} ({imp.get('format')}, sha256 {imp.get('sha256', '')[:12]})")
        for name, keys in (("audio", ("sample_rate", "num_mel_bins", "target_length")),
                           ("video", ("frames_per_clip", "size", "crops", "remove_borders"))):
            if s.get(name, {}).get("clips_per_video") is not None:
                lines.append(f"    {name}: {_layout(s[name], keys)}  → {shapes.get(name)}")
            else:  # no clip layout recorded (imported or synthetic features): the stored shape only
                clips, dim = shapes.get(name) or ("?", "?")
                lines.append(f"    {name}: {clips} clip(s) × {dim}-d per item")
        if info.get("duplicate_rows"):
            lines.append(f"    {info['duplicate_rows']} duplicate row(s) across shards "
                         "(counted once; the first copy is read)")
        for damaged in info.get("damaged_shards", []):
            lines.append(f"    damaged shard {damaged} (skipped by readers; the next extract re-does its items)")
        lines.append(f"    path: {info['path']}")
        if verbose:
            lines.extend("    " + ln for ln in json.dumps(s, indent=2).splitlines())
    return lines


def _shape(shape) -> str:
    return "(" + ", ".join(str(x) for x in shape) + ")" if shape else "?"


def _layout(section: dict, keys: tuple[str, ...]) -> str:
    """Clip layout plus whichever of `keys` the encoder's settings have."""
    parts = [f"{section.get('clips_per_video')} clips × {section.get('clip_duration')} s"]
    parts += [f"{k}={section[k]}" for k in keys if k in section]
    return ", ".join(parts)


def cache_verify(cache_dir, prefix: str | None = None) -> list[dict]:
    """Read every shard of each namespace in full (checksums included): damaged shards, duplicate
    keys and true item counts. Damaged shards are reported, not moved (`extract` quarantines them)."""
    cache = FeatureCache(cache_dir)
    spaces = [cache.find(prefix)] if prefix else cache.namespaces()
    return [verify_namespace(ns) for ns in spaces]


def format_verify(reports: list[dict]) -> list[str]:
    lines = []
    for r in reports:
        state = "ok" if not r["damaged"] else f"{len(r['damaged'])} damaged shard(s)"
        lines.append(f"{r['fingerprint'][:16]}  {state}: {r['items']} items in {r['shards']} shards "
                     f"({r['duplicate_rows']} duplicate rows)  {r['path']}")
        lines.extend(f"    damaged {d['shard']}: {d['reason']}" for d in r["damaged"])
    return lines


def cache_status(cache_dir, prefix: str | None = None) -> list[dict]:
    """Where extraction stands in each namespace, readable while jobs run: done / failed / remaining
    against the namespace's plans (committed shards and the failure log are the truth), and each
    partition job's progress file (running or finished, rate, last update), with an overall rate and ETA."""
    cache = FeatureCache(cache_dir)
    spaces = [cache.find(prefix)] if prefix else cache.namespaces()
    return [_status(ns) for ns in spaces]


def _status(ns) -> dict:
    now = time.time()
    committed = ns.committed_keys()
    failed_keys = {f.key for f in ns.failures() if f.key}
    plans = namespace_plans(ns.root)
    planned = {e.key for p in plans for e in p.entries.values()}
    done = len(planned & committed)
    failed = len((planned - committed) & failed_keys)
    parts = read_progress(ns.root)
    for part in parts:
        elapsed = max(part["updated"] - part["started"], 1e-9)
        part["rate"] = part["committed"] / elapsed
        part["age"] = now - part["updated"]
        part["state"] = "finished" if part["finished"] else _liveness(part)
    running = [p for p in parts if p["state"] == "running"]
    rate = sum(p["rate"] for p in running)
    remaining = len(planned) - done - failed if plans else None
    return {
        "fingerprint": ns.fingerprint, "path": str(ns.root), "committed": len(committed),
        "plans": [{"source": p.source, "items": len(p.entries) + len(p.errors), "unreadable": len(p.errors)}
                  for p in plans],
        "planned": len(planned), "done": done, "failed": failed, "remaining": remaining,
        "rate": rate, "eta_seconds": remaining / rate if remaining and rate > 0 else None, "partitions": parts,
    }


def format_status(reports: list[dict], cache_dir) -> list[str]:
    if not reports:
        return [f"{cache_dir}: no namespaces yet (run `mvbind extract`)"]
    lines = []
    for r in reports:
        head = f"{r['fingerprint'][:16]}  committed items {r['committed']}"
        if r["plans"]:
            share = 100.0 * r["done"] / r["planned"] if r["planned"] else 100.0
            head += (f"; planned {r['planned']}: done {r['done']} ({share:.1f} %), failed {r['failed']}, "
                     f"remaining {r['remaining']}")
        else:
            head += "; no plan (run `mvbind extract SOURCE --plan-only` for done/remaining)"
        running = sum(p["state"] == "running" for p in r["partitions"])
        head += f"; {running} partition job(s) running"
        if running:
            head += f", {r['rate']:.2f} items/s"
            if r["eta_seconds"] is not None:
                head += f", ETA {_duration(r['eta_seconds'])}"
        lines.append(head)
        for p in r["partitions"]:
            who = f"{p['partition']}/{p['num_partitions']} ({p['host']} pid {p['pid']})"
            lines.append(f"    partition {who}: {p['state']}, "
                         f"committed {p['committed']} of {p['todo']} to do, failed {p['failed']}, "
                         f"reused {p['reused']}, {p['rate']:.2f} items/s, updated {_duration(p['age'])} ago")
    return lines


def _liveness(part: dict) -> str:
    """"running", or "stopped" when its process is gone (checked on this host only; elsewhere the last
    update's age tells)."""
    if part["host"] != os.uname().nodename:
        return "running"
    try:
        os.kill(part["pid"], 0)
    except ProcessLookupError:
        return "stopped (rerun to resume)"
    except PermissionError:
        pass
    return "running"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
