"""Latency and throughput of `POST /api/recommend` on a warm `mvbind serve`, and where the time goes.

A real server (`python -m mvbind serve` in its own process, on a free localhost port) over the demo's
run and library (run `mvbind demo` first), and a real HTTP client here. Every request uploads a
different 10 s 720p H.264/AAC video (the same picture remuxed with a distinct comment, so the bytes
and the content key differ and nothing comes from the feature cache): each request pays upload,
probe, hash, decode, encode and search.

  1. signal encoder, the demo's trained run and library: sequential requests (median, p95), the
     server's own breakdown per stage, then 4 concurrent clients (throughput).
  (decode = the encoder's input preparation: for signal, decoding plus its hand-made features; beats =
  cut detection on the video plus beat tracking on tracks not seen before: recommend.beat_align.)
  2. the same with the tiny ImageBind (random weights, zero-shot) over 20 of the demo's tracks,
     indexed here into a temporary library.

    .venv/bin/python -m bench.bench_serve --demo demo
    .venv/bin/python -m bench.bench_serve --demo demo --requests 10 --skip-tiny

Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mvbind.pipeline.media.ffmpeg import ffmpeg_exe

STAGES = ("upload", "probe", "hash", "read", "decode", "encode", "project", "search", "beats", "total")


def make_videos(folder: Path, n: int, seconds: float = 10.0) -> list[Path]:
    """One 10 s 1280x720 30 fps H.264 + AAC video, remuxed n times with distinct metadata (distinct bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / "base.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=1280x720:rate=30:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=frequency=330:sample_rate=44100:duration={seconds}", "-c:v", "libx264", "-preset",
                    "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(base)], check=True)
    out = []
    for i in range(n):
        path = folder / f"clip{i:03d}.mp4"
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-i", str(base), "-c", "copy", "-metadata",
                        f"comment=bench {i} {time.time_ns()}", str(path)], check=True)
        out.append(path)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "mvbind", "serve", *args, "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited; see {log}")
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        self.startup = time.perf_counter() - t0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def post(url: str, path: Path) -> tuple[float, dict]:
    query = urllib.parse.urlencode({"k": 5, "name": path.name})
    request = urllib.request.Request(f"{url}/api/recommend?{query}", data=path.read_bytes(), method="POST",
                                     headers={"Content-Type": "video/mp4"})
    t = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as r:
        body = json.loads(r.read())
    return time.perf_counter() - t, body["seconds"]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def measure(title: str, server: Server, videos: list[Path], clients: int) -> None:
    n = len(videos) // 2
    post(server.url, videos[-1])  # warm: first use builds the encoder and imports the decoders
    walls, parts = [], []
    for v in videos[:n]:
        wall, seconds = post(server.url, v)
        walls.append(wall)
        parts.append(seconds)
    print(f"\n## {title}")
    print(f"server start (load run, library, encoder; answer /api/health): {server.startup:.1f} s")
    print(f"sequential, {n} requests: median {statistics.median(walls) * 1000:.0f} ms, "
          f"p95 {pct(walls, 0.95) * 1000:.0f} ms (client wall time)")
    print("where the time goes (median per request, server side):")
    for stage in STAGES:
        vals = [p.get(stage, 0.0) for p in parts]
        print(f"  {stage:>8}: {statistics.median(vals) * 1000:8.1f} ms")
    rest = videos[n:-1]
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        cwalls = [w for w, _ in pool.map(lambda v: post(server.url, v), rest)]
    span = time.perf_counter() - t
    print(f"{clients} concurrent clients, {len(rest)} requests: {len(rest) / span:.2f} requests/s "
          f"(median latency {statistics.median(cwalls) * 1000:.0f} ms, p95 {pct(cwalls, 0.95) * 1000:.0f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("demo"), help="the folder `mvbind demo` wrote")
    ap.add_argument("--requests", type=int, default=20, help="sequential requests (as many again concurrent)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--skip-tiny", action="store_true")
    args = ap.parse_args()
    settings = args.demo / "pipeline.toml"
    if not settings.is_file():
        raise SystemExit(f"{settings} not found: run `mvbind demo {args.demo}` first")
    print(f"machine: {os.cpu_count()} CPUs; {sys.platform}; python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="mvbind-bench-serve-") as tmp:
        tmp = Path(tmp)
        videos = make_videos(tmp / "videos", 2 * args.requests + 1)
        print(f"upload: {videos[0].stat().st_size / 2**20:.1f} MB per 10 s 720p video")
        server = Server(["--config", str(settings), "--run", "demo", "--library", "demo"], tmp / "signal.log")
        try:
            measure("signal encoder, demo run and library", server, videos, args.clients)
        finally:
            server.stop()
        if args.skip_tiny:
            return
        tracks = tmp / "tracks"
        tracks.mkdir()
        for mp3 in sorted((args.demo / "data" / "library").glob("*.mp3"))[:20]:
            os.symlink(mp3.resolve(), tracks / mp3.name)
        opts = ["--arch", "tiny", "--weights", "random", "--set", "encoder.name=imagebind",
                "--set", f"paths.cache={tmp / 'cache'}", "--set", f"library.dir={tmp / 'libs'}"]
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mvbind", "index", str(tracks), "--name", "tiny20", "--quiet", *opts],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"\n(indexed 20 tracks with the tiny ImageBind in {time.perf_counter() - t:.0f} s)")
        fresh = make_videos(tmp / "videos2", 2 * args.requests + 1)
        server = Server(["--library", "tiny20", *opts], tmp / "tiny.log")
        try:
            measure("tiny ImageBind (random weights, zero-shot), 20 tracks", server, fresh, args.clients)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
