"""The web page and JSON API of `mvbind serve`, over one `Recommender` (run, library, encoder loaded once).

    GET  /                              the page (static files shipped in the package; no CDN, no build step)
    GET  /api/health                    library, projector, encoder; "ok"
    GET  /api/videos                    videos the feature cache already holds (id = content key)
    POST /api/recommend?k=&name=        a video file as the raw request body → its id + top-k tracks
    POST /api/videos/{id}/recommend?k=  top-k tracks for an uploaded or already-extracted video
                                        (both take &text=&text_weight= to steer with words)
    GET  /api/search?text=&k=           the library searched by text alone (zero-shot)
    GET  /api/videos/{id}/file          the video itself (HTTP range requests)
    GET  /api/videos/{id}/preview?track=&start=&mix=   the video with a track under it (ffmpeg, on demand)
    GET  /api/tracks/{id}/audio         a library track (HTTP range requests, so the page can seek)
    GET  /docs                          the OpenAPI page

Why the upload is the raw body rather than multipart: the size cap is enforced while the bytes stream
to disk (a multipart parser spools the whole part first), and a browser's XMLHttpRequest still reports
upload progress. Every error is JSON ``{"error": "<one line>"}`` with a fitting status.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.library.recommender import Recommender
from mvbind.pipeline.media.preview import write_preview
from mvbind.pipeline.serve.uploads import UploadRejected, Video, VideoRegistry

log = logging.getLogger("mvbind.serve")
STATIC = Path(str(resources.files("mvbind.pipeline.serve") / "static"))
RAW_BODY = {"requestBody": {"required": True, "description": "the video file's bytes",
                            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                        "video/*": {"schema": {"type": "string", "format": "binary"}}}}}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def create_app(recommender: Recommender, config: Config, *, temp_root: str | Path | None = None) -> FastAPI:
    """The ASGI app. The caller owns `recommender`; the app owns a temporary folder it removes on shutdown."""
    sc = config.serve
    registry = VideoRegistry(keep=sc.keep_uploads, root=temp_root)
    max_bytes = sc.max_upload_mb * 2**20
    lib = recommender.library
    started = time.time()

    def refresh_indexed() -> None:
        found = recommender.indexed_videos(limit=sc.indexed_videos)
        registry.set_indexed([Video(v.key, Path(v.path), os.path.basename(v.path), "indexed", v.duration, v.key)
                              for v in found if v.exists])

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await run_in_threadpool(refresh_indexed)
        try:
            yield
        finally:
            registry.close()

    app = _fastapi(title="mvbind", summary="Background music for short videos: the tracks of a library that fit.",
                   version=_version(), lifespan=lifespan, redoc_url=None)
    app.state.registry = registry
    app.state.recommender = recommender

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, err: ApiError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(UploadRejected)
    async def _rejected(_request: Request, err: UploadRejected):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, err: StarletteHTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = " ".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body")) or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, err: Exception):
        log.exception("server error")
        return JSONResponse({"error": f"server error ({type(err).__name__}); the server log has the details"},
                            status_code=500)

    def video_or_404(vid: str, pin: bool = False) -> Video:
        video = registry.pin(vid) if pin else registry.get(vid)
        if video is None:
            raise ApiError(404, f"no video {vid!r} here: upload it again (uploads are kept for the last "
                                f"{sc.keep_uploads}) or pick one from /api/videos")
        return video

    def recommend(video: Video | None, k: int | None, timing: dict, t0: float, text: str | None = None,
                  text_weight: float | None = None) -> dict:
        if video is None:  # text alone
            try:
                report = recommender.recommend([], k=k or sc.k, curves=True, text=text, notify=log.info)
            except MvbindError as err:
                raise ApiError(422, str(err)) from None
            return answer(None, report, {**timing, "total": time.perf_counter() - t0})
        t = time.perf_counter()
        embedded = (recommender.embed_key(video.key, path=str(video.path)) if video.key else None) \
            or recommender.embed(video.path)
        timing["embed"] = time.perf_counter() - t
        if embedded.video is None:
            raise ApiError(422, f"{video.name}: {embedded.reason}")
        video.key = embedded.key
        video.duration = embedded.duration or video.duration
        try:
            report = recommender.recommend([embedded], k=k or sc.k, curves=True, text=text, text_weight=text_weight,
                                           notify=log.info)
        except MvbindError as err:
            raise ApiError(422, str(err)) from None
        # upload, probe, embed (= hash + read or decode + encode), text, project, search, beats; total = the request
        parts = ("text", "project", "search", "beats")
        seconds = {**timing, **embedded.seconds, **{p: report.seconds[p] for p in parts if p in report.seconds},
                   "total": time.perf_counter() - t0}
        return answer(video, report, seconds)

    def answer(video: Video | None, report, seconds: dict) -> dict:
        rec = report.recommendations[0]
        for r in rec.results:
            r["audio_url"] = f"/api/tracks/{r['id']}/audio"
            r["track"] = os.path.basename(r["track"])  # no server paths to clients
        return {"video": _video_json(video) if video else None, "mode": report.mode, "projector": report.projector,
                "search": report.search, "k": report.k, "notes": report.notes, "steering": report.steering,
                "results": rec.results, "seconds": {k: round(v, 4) for k, v in seconds.items()}}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health", summary="Is the server up; what it serves")
    def health():
        return {"status": "ok", "library": {"name": Path(str(recommender.library_path)).name,
                                            "tracks": lib.n_tracks, "windows": lib.n_windows},
                "mode": recommender.projector.kind, "projector": recommender.projector.describe(),
                "encoder": config.encoder.name, "k": sc.k, "max_upload_mb": sc.max_upload_mb,
                "steering": {"available": lib.steering_problem() is None,
                             "why_not": (lib.steering_problem() or "").replace(str(lib.path), lib.path.name) or None,
                             "text_weight": config.recommend.text_weight},
                "uptime_s": round(time.time() - started, 1)}

    @app.get("/api/videos", summary="Videos the feature cache already holds, playable on this server")
    def videos():
        return {"videos": [_video_json(v) for v in registry.indexed()]}

    @app.post("/api/recommend", summary="Upload a video (raw body) and get the tracks that fit it",
              openapi_extra=RAW_BODY)
    async def recommend_upload(request: Request, k: Annotated[int | None, Query(ge=1, le=100)] = None,
                               name: Annotated[str | None, Query(max_length=255)] = None,
                               text: Annotated[str | None, Query(max_length=300)] = None,
                               text_weight: Annotated[float | None, Query(ge=0, le=1)] = None):
        t0 = time.perf_counter()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise UploadRejected(413, f"the upload is {int(declared) / 2**20:.0f} MB; the limit is "
                                      f"{sc.max_upload_mb} MB (serve.max_upload_mb)")
        vid, part = registry.new_upload_path()
        size = 0
        try:
            with open(part, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadRejected(413, f"the upload is over the {sc.max_upload_mb} MB limit "
                                                  "(serve.max_upload_mb)")
                    out.write(chunk)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        timing = {"upload": time.perf_counter() - t0}
        t = time.perf_counter()
        video = await run_in_threadpool(registry.add_upload, vid, part, name or "")
        timing["probe"] = time.perf_counter() - t
        try:
            return await run_in_threadpool(recommend, video, k, timing, t0, text or None, text_weight)
        finally:
            registry.release(video.id)

    @app.post("/api/videos/{vid}/recommend", summary="The tracks that fit an uploaded or already-extracted video")
    def recommend_known(vid: str, k: Annotated[int | None, Query(ge=1, le=100)] = None,
                        text: Annotated[str | None, Query(max_length=300)] = None,
                        text_weight: Annotated[float | None, Query(ge=0, le=1)] = None):
        video = video_or_404(vid, pin=True)
        try:
            return recommend(video, k, {}, time.perf_counter(), text or None, text_weight)
        finally:
            registry.release(video.id)

    @app.get("/api/search", summary="Search the library by text alone (zero-shot, ImageBind text → music)")
    def search_text(text: Annotated[str, Query(min_length=1, max_length=300)],
                    k: Annotated[int | None, Query(ge=1, le=100)] = None):
        return recommend(None, k, {}, time.perf_counter(), text)

    @app.get("/api/videos/{vid}/file", summary="The video file (supports HTTP range requests)")
    def video_file(vid: str):
        video = video_or_404(vid)
        return FileResponse(video.path, filename=None, content_disposition_type="inline")

    @app.get("/api/videos/{vid}/preview", summary="Download the video with a track under it (made on demand)")
    async def preview(vid: str, track: Annotated[int, Query(ge=0)],
                      start: Annotated[float, Query(ge=0, le=86400)] = 0.0,
                      mix: Annotated[float, Query(ge=0, le=4)] = 0.0):
        track_path = track_or_404(track)
        video = video_or_404(vid, pin=True)
        out_dir = registry.previews / secrets.token_hex(8)
        out_dir.mkdir()
        try:
            path, used = await run_in_threadpool(
                write_preview, video.path, track_path, start, out_dir, duration=video.duration or 3600.0,
                mode="mix" if mix > 0 else "replace", mix_volume=mix, notify=log.info)
        except MvbindError as err:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise ApiError(500, str(err)) from None
        finally:
            registry.release(video.id)
        stem = Path(video.name).stem or "video"
        download = f"{stem}+{Path(str(lib.paths[track])).stem}{Path(path).suffix}"
        # made for this download only: removed once it is sent
        return FileResponse(path, filename=download, headers={"X-Preview-Audio": used},
                            background=BackgroundTask(shutil.rmtree, out_dir, ignore_errors=True))

    def track_or_404(track: int) -> Path:
        if not 0 <= track < lib.n_tracks:
            raise ApiError(404, f"no track {track}: the library has tracks 0–{lib.n_tracks - 1}")
        path = Path(str(lib.paths[track]))
        if not path.is_file():
            raise ApiError(404, f"track {track}'s file is no longer where it was indexed; re-index the library")
        return path

    @app.get("/api/tracks/{track}/audio", summary="A library track's audio (supports HTTP range requests)")
    def track_audio(track: int):
        return FileResponse(track_or_404(track), content_disposition_type="inline")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _video_json(video: Video) -> dict:
    return {"id": video.id, "name": video.name, "kind": video.kind, "duration": round(video.duration, 3),
            "url": f"/api/videos/{video.id}/file"}


def _fastapi(**kwargs) -> FastAPI:
    """FastAPI whose OpenAPI page (/docs) serves Swagger UI from the fastapi-offline wheel (the serve extra),
    so it works offline; FastAPI's own page loads Swagger UI from a CDN, used only without that package."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kwargs)
    return FastAPIOffline(static_url="/docs-assets", favicon_url="data:,", **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mvbind")
    except PackageNotFoundError:  # a checkout on sys.path without an install
        return "0+unknown"
