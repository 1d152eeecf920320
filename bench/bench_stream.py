"""Stage two's memory when reading the cache: pooled per shard while reading vs all clips first.

Writes synthetic shards (audio 3 clips, video 15 views per item, fp16, `--dim` wide) into a
temporary namespace, then reads it in a fresh process per mode and prints each one's peak RSS:

    .venv/bin/python -m bench.bench_stream --items 1000000 --dim 64     # 1M items (2.3 GB of shards)
    .venv/bin/python -m bench.bench_stream --items 100000 --dim 1024    # ImageBind's width

`pooled` is what `train`/`eval` do (`Namespace.load(pool=mean_pool)`): memory grows with
items × dim. `clips` is the old path (every clip loaded, then pooled): items × clips × dim.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mvbind.cache import FeatureCache, Row

AUDIO_CLIPS, VIDEO_VIEWS = 3, 15


def write(root: Path, items: int, dim: int, shard: int) -> None:
    settings = {"schema": 1, "encoder": {"name": "bench"}, "shapes": {"audio": [AUDIO_CLIPS, dim],
                                                                       "video": [VIDEO_VIEWS, dim]}}
    ns = FeatureCache(root).create(settings)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for start in range(0, items, shard):
        n = min(shard, items - start)
        audio = rng.standard_normal((n, AUDIO_CLIPS, dim), np.float32).astype(np.float16)
        video = rng.standard_normal((n, VIDEO_VIEWS, dim), np.float32).astype(np.float16)
        rows = [Row(key=f"{start + i:032x}", path=f"/data/v{start + i}.mp4", audio=audio[i], video=video[i],
                    duration=10.0) for i in range(n)]
        ns.write_shard(rows)
    print(f"wrote {items} items ({items * (AUDIO_CLIPS + VIDEO_VIEWS) * dim * 2 / 1e9:.2f} GB of fp16 clips) "
          f"in {time.perf_counter() - t:.1f}s", flush=True)


def read(root: Path, mode: str) -> None:
    from mvbind.pipeline.binding.pooling import mean_pool

    ns = FeatureCache(root).namespaces()[0]
    t = time.perf_counter()
    feats = ns.load(pool=mean_pool) if mode == "pooled" else ns.load()
    if mode == "clips":
        video, audio = mean_pool(feats.video), mean_pool(feats.audio)
    else:
        video, audio = feats.video, feats.audio
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mode": mode, "items": len(feats), "video": list(video.shape), "audio": list(audio.shape),
                      "peak_rss_gb": round(peak / 1e9, 3), "seconds": round(time.perf_counter() - t, 1)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--shard", type=int, default=10_000, help="items per shard")
    ap.add_argument("--modes", nargs="+", default=["pooled", "clips"], choices=["pooled", "clips"])
    ap.add_argument("_read", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._read:
        read(Path(args._read[0]), args._read[1])
        return
    with tempfile.TemporaryDirectory(prefix="mvbind-stream-") as tmp:
        write(Path(tmp), args.items, args.dim, args.shard)
        for mode in args.modes:
            out = subprocess.run([sys.executable, "-m", "bench.bench_stream", tmp, mode], capture_output=True,
                                 text=True)
            print(out.stdout.strip() or out.stderr.strip()[-500:], flush=True)


if __name__ == "__main__":
    main()
