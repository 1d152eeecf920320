"""Benchmark stage one: `mvbind extract` against the naive loop a user writes from ImageBind's README.

Two scenarios, each method run in its own process (peak memory = summed RSS of the process tree,
sampled every 50 ms):

  decode  40 videos of 10-20 s at 720x1280, 30 fps, with the tiny model: decoding dominates.
  model   8 short videos with the ViT-S-sized model: the model dominates; compared with the
          pure model-forward time of the same batches on already-prepared inputs.

    .venv/bin/python -m bench.bench_extract                  # both scenarios
    .venv/bin/python -m bench.bench_extract --scenario decode --videos 10
    .venv/bin/python -m bench.bench_extract --scenario model --model-videos 2          # model build vs forward
    # on a GPU: the huge architecture, device transforms, throughput against the pure forward
    .venv/bin/python -m bench.bench_extract --scenario model --model-arch huge --model-videos 240 \
        --model-batch 16 --workers 8 --transforms device

Figures are printed; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ media
def make_media(folder: Path, count: int, size: tuple[int, int], durations: tuple[float, float], fps: int) -> list[Path]:
    from tests.synth import make_video

    folder.mkdir(parents=True, exist_ok=True)
    sources = ["testsrc2", "smptebars", "testsrc", "rgbtestsrc"]
    paths = []
    for i in range(count):
        duration = durations[0] + (durations[1] - durations[0]) * ((i * 7) % count) / max(count - 1, 1)
        path = folder / f"v{i:03d}.mp4"
        if not path.exists():
            make_video(path, duration=round(duration, 2), size=size, fps=fps, audio_channels=2,
                       sample_rate=44100, freq=200 + 13 * i, source=sources[i % len(sources)],
                       extra=("-g", str(2 * fps), "-crf", "23"))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------ methods
def run_naive(videos: list[Path], arch: str, out: Path) -> dict:
    """The loop from ImageBind's README: decode every frame at native resolution, build clips, run, save."""
    import av
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mvbind.pipeline.encoders.imagebind.audio import AudioSettings, audio_inputs
    from mvbind.pipeline.encoders.imagebind.model import build_imagebind
    from mvbind.pipeline.media.sampler import clip_spans

    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1, 1)
    model = build_imagebind(arch, seed=0).eval()
    out.mkdir(parents=True, exist_ok=True)
    t = {"decode": 0.0, "infer": 0.0, "write": 0.0}
    start = time.perf_counter()
    for i, path in enumerate(videos):
        t0 = time.perf_counter()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)]))
            fps = float(stream.average_rate)
        n = len(frames)
        clips = []
        for s, e in clip_spans(n / fps, 2.0, 5):
            idx = list(range(math.ceil(fps * s), min(math.ceil(fps * e), n)))
            clip = frames[idx].permute(3, 0, 1, 2).float() / 255.0  # pytorchvideo: the whole clip as float
            clip = clip[:, torch.linspace(0, clip.shape[1] - 1, 2).long()]
            c, tt, h, w = clip.shape
            scale = 224 / min(h, w)
            size = (224, int(w * scale)) if h < w else (int(h * scale), 224)
            clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False)
            clip = (clip - mean) / std
            long = max(size)
            for off in (0, math.ceil((long - 224) / 2), long - 224):
                clips.append(clip[:, :, off:off + 224, :] if h > w else clip[:, :, :, off:off + 224])
        video = torch.stack(clips)
        audio = audio_inputs(str(path), AudioSettings()).melspec
        del frames
        t1 = time.perf_counter()
        with torch.no_grad():
            ev = model.embed_vision(video).numpy()
            ea = model.embed_audio(audio).numpy()
        t2 = time.perf_counter()
        np.save(out / f"{i}_video.npy", ev)
        np.save(out / f"{i}_audio.npy", ea)
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["infer"] += t2 - t1
        t["write"] += t3 - t2
    total = time.perf_counter() - start
    return {"seconds": total, "videos": len(videos), "videos_per_s": len(videos) / total, **t}


def run_mvbind(videos: list[Path], arch: str, out: Path, workers: int, batch: int, transforms: str = "auto") -> dict:
    from mvbind.pipeline.config import load_config
    from mvbind.pipeline.media.inputs import InputItem
    from mvbind.stages.extract import extract

    config = load_config(overrides={"encoder.arch": arch, "encoder.weights": "random", "paths.cache": str(out),
                                    "extract.workers": workers, "encoder.batch_size": batch,
                                    "encoder.transforms": transforms})
    s = extract(config, [InputItem(str(p)) for p in videos], progress=False)
    assert s.extracted == len(videos), s.lines()
    return {"seconds": s.seconds, "videos": s.extracted, "videos_per_s": s.videos_per_second,
            "decode": s.decode_seconds, "decode_wait": s.decode_wait_seconds, "transfer": s.transfer_seconds,
            "infer": s.infer_seconds, "write": s.write_seconds, "write_wait": s.write_wait_seconds,
            "model": s.model_seconds or 0.0}


def run_forward_only(videos: list[Path], arch: str, batch: int) -> dict:
    """Pure model time: the same batches on inputs prepared beforehand (preparation not timed)."""
    import torch

    from mvbind.pipeline.config import load_config
    from mvbind.pipeline.encoders.base import make_embedder, make_preparer

    config = load_config(overrides={"encoder.arch": arch, "encoder.weights": "random", "encoder.transforms": "cpu"})
    prepared = [make_preparer(config)(str(p)) for p in videos]
    embedder = make_embedder(config, progress=False)
    for it in prepared:  # inputs already on the device: only the forward is timed
        it.inputs = {m: x.to(embedder.device) for m, x in it.inputs.items()}
    embedder.embed(prepared[:1])  # warm-up
    if embedder.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(prepared), batch):
        embedder.embed(prepared[i:i + batch])
    total = time.perf_counter() - start
    return {"seconds": total, "videos": len(videos), "videos_per_s": len(videos) / total, "infer": total}


# ------------------------------------------------------------------------------ harness
def tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of pid and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def measure(args: list[str]) -> dict:
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_extract", "_run", *args], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"benchmark child failed: {args}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 2**20
    return result


def show(name: str, r: dict) -> None:
    split = " ".join(f"{k} {r[k]:.1f}s" for k in ("model", "decode", "decode_wait", "transfer", "infer", "write",
                                                 "write_wait") if k in r)
    print(f"  {name:<14} {r['videos']:>3} videos in {r['seconds']:7.1f}s = {r['videos_per_s']:6.2f} videos/s"
          f"   [{split}]   peak RSS {r['peak_rss_mib']:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["decode", "model", "both"], default="both")
    ap.add_argument("--videos", type=int, default=40, help="videos in the decode scenario")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--media", type=Path, default=Path(tempfile.gettempdir()) / "mvbind-bench-media")
    ap.add_argument("--model-arch", default="small", help="the model scenario's architecture (huge on a GPU)")
    ap.add_argument("--model-videos", type=int, default=8)
    ap.add_argument("--model-batch", type=int, default=4)
    ap.add_argument("--transforms", default="auto", help="encoder.transforms for the mvbind runs")
    args = ap.parse_args()
    import torch

    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, "
          f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if args.scenario in ("decode", "both"):
            print(f"making {args.videos} videos of 10-20 s at 720x1280, 30 fps (cached in {args.media}) …")
            vids = make_media(args.media / "decode", args.videos, (720, 1280), (10.0, 20.0), 30)
            listing = work / "decode.txt"
            listing.write_text("\n".join(map(str, vids)))
            print("scenario decode (tiny model: decoding dominates)")
            naive = measure(["naive", str(listing), "tiny", str(work / "naive")])
            show("naive loop", naive)
            mv = measure(["mvbind", str(listing), "tiny", str(work / "mv"), str(args.workers), "8"])
            show("mvbind", mv)
            print(f"  speed-up: {mv['videos_per_s'] / naive['videos_per_s']:.1f}x")
        if args.scenario in ("model", "both"):
            vids = make_media(args.media / "model", args.model_videos, (360, 640), (6.0, 6.0), 30)
            listing = work / "model.txt"
            listing.write_text("\n".join(map(str, vids)))
            arch, batch = args.model_arch, str(args.model_batch)
            print(f"scenario model ({arch} architecture, {len(vids)} videos, batch {batch}: the model dominates)")
            fwd = measure(["forward", str(listing), arch, "-", "0", batch])
            show("forward only", fwd)
            mv = measure(["mvbind", str(listing), arch, str(work / "mv-model"), str(args.workers), batch,
                          args.transforms])
            show("mvbind", mv)
            print(f"  end-to-end / pure forward: {mv['seconds'] / fwd['seconds']:.2f}x; throughput "
                  f"{mv['videos_per_s'] / fwd['videos_per_s']:.2f} of the pure forward's; without the model "
                  f"build {(mv['seconds'] - mv['model']) / fwd['seconds']:.2f}x")


def child(argv: list[str]) -> None:
    method, listing, arch, out = argv[:4]
    videos = [Path(p) for p in Path(listing).read_text().splitlines()]
    if method == "naive":
        result = run_naive(videos, arch, Path(out))
    elif method == "mvbind":
        result = run_mvbind(videos, arch, Path(out), int(argv[4]), int(argv[5]), *argv[6:7])
    else:
        result = run_forward_only(videos, arch, int(argv[5]))
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        child(sys.argv[2:])
    else:
        main()
