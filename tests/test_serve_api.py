"""`mvbind serve`'s JSON API through FastAPI's test client, over a real trained run and library.

The library is the planted one (tests/planted_library.py): every test video's soundtrack sits inside
one track, so an upload of video i must come back with track i first and a suggested start inside
the planted stretch: the API can't pass by returning any well-formed list. Bad uploads are real
files (empty, text renamed .mp4, audio-only, too big), and traversal attempts are real requests.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from mvbind.cli import cli
from mvbind.errors import MvbindError
from mvbind.pipeline.serve.uploads import VideoRegistry
from mvbind.stages.serve import check_host, is_local, make_app
from tests.media import run_ffmpeg
from tests.planted_library import SOURCES, build_planted

UPLOAD = "/api/recommend"


@pytest.fixture(scope="module")
def planted(tmp_path_factory, one_thread_module):
    return build_planted(tmp_path_factory.mktemp("serve"))


def small_upload_config(config, mb: int):
    return dataclasses.replace(config, serve=dataclasses.replace(config.serve, max_upload_mb=mb, keep_uploads=3))


@pytest.fixture(scope="module")
def client(planted):
    config = small_upload_config(planted["config"], 1)
    app = make_app(config, run="run", library="planted", progress=False)
    with TestClient(app) as c:
        yield c


def upload(client, path: Path, name: str | None = None, k: int = 3):
    params = {"k": k, "name": name if name is not None else path.name}
    return client.post(UPLOAD, params=params, content=path.read_bytes(),
                       headers={"Content-Type": "application/octet-stream"})


def one_line_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    assert "\n" not in message and message
    for w in words:
        assert w in message, message
    return message


def test_health_describes_the_library_and_the_run(client):
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["mode"] == "run" and body["encoder"] == "signal"
    assert body["library"] == {"name": "planted.mvlib.h5", "tracks": len(SOURCES),
                               "windows": body["library"]["windows"]}
    assert body["max_upload_mb"] == 1


@pytest.mark.parametrize("i", [0, 3, 6])
def test_an_upload_gets_its_planted_track_first_from_inside_the_planted_stretch(client, planted, i):
    response = upload(client, planted["videos"] / f"v{i}.mp4")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["video"]["kind"] == "upload" and body["video"]["name"] == f"v{i}.mp4"
    assert abs(body["video"]["duration"] - 3.0) < 0.2
    top = body["results"][0]
    assert top["track"] == f"track{i}.wav" and top["rank"] == 1, body["results"]
    lo, hi = planted["spans"][i]
    assert lo <= top["start"] and top["start"] + 2.0 <= hi + 1e-6, (top, planted["spans"][i])
    assert top["audio_url"] == f"/api/tracks/{top['id']}/audio"
    assert "/" not in top["track"]  # no server paths in answers
    # the window curve is the score the search ranked by: its maximum is the card's score, at its start
    starts, scores = np.array(top["curve"]).T
    j = int(np.argmax(scores))
    assert starts[j] == top["start"] and abs(scores[j] - top["score"]) < 1e-3
    assert set(body["seconds"]) >= {"upload", "probe", "embed", "search", "beats", "total"}
    assert all("aligned_start" in r and "alignment" in r for r in body["results"])  # recommend.beat_align


def test_indexed_videos_are_listed_and_recommended_from_the_cache(client, planted):
    videos = client.get("/api/videos").json()["videos"]
    names = {v["name"] for v in videos}
    assert {f"v{i}.mp4" for i in range(len(SOURCES))} <= names
    assert all("/" not in v["name"] for v in videos)
    v2 = next(v for v in videos if v["name"] == "v2.mp4")
    body = client.post(f"/api/videos/{v2['id']}/recommend", params={"k": 2}).json()
    assert body["results"][0]["track"] == "track2.wav" and len(body["results"]) == 2
    assert "read" in body["seconds"] and "encode" not in body["seconds"]  # from the cache, not re-encoded
    file = client.get(v2["url"])
    assert file.status_code == 200 and file.content == (planted["videos"] / "v2.mp4").read_bytes()


def test_track_audio_supports_range_requests(client, planted):
    data = (planted["root"] / "music" / "track1.wav").read_bytes()
    full = client.get("/api/tracks/1/audio")
    assert full.status_code == 200 and full.content == data and full.headers["accept-ranges"] == "bytes"
    part = client.get("/api/tracks/1/audio", headers={"Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == data[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = client.get("/api/tracks/1/audio", headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.status_code == 206 and tail.content == data[-10:]
    assert client.get("/api/tracks/1/audio", headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416


def test_bad_uploads_get_one_line_reasons_and_leave_nothing_behind(client, planted, tmp_path):
    registry = client.app.state.registry
    before = sorted(p.name for p in registry.uploads.iterdir())
    one_line_error(client.post(UPLOAD, content=b""), 400, "empty")
    text = tmp_path / "notes.mp4"
    text.write_text("these are my notes, not a video\n" * 20)
    one_line_error(upload(client, text), 415, "not a video")
    audio_only = tmp_path / "song.mp4"
    run_ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(audio_only))
    one_line_error(upload(client, audio_only), 415, "no video stream", "audio only")
    huge = tmp_path / "huge.mp4"
    huge.write_bytes((planted["videos"] / "v0.mp4").read_bytes() + bytes(2**20))
    one_line_error(upload(client, huge), 413, "1 MB", "serve.max_upload_mb")

    def chunks():  # no Content-Length: the cap holds while the body streams
        for _ in range(40):
            yield bytes(64 * 1024)

    one_line_error(client.post(UPLOAD, content=chunks()), 413, "limit")
    assert sorted(p.name for p in registry.uploads.iterdir()) == before


def test_a_client_file_name_is_only_shown_never_used(client, planted):
    registry = client.app.state.registry
    body = upload(client, planted["videos"] / "v1.mp4", name="../../../../etc/passwd\n<script>").json()
    assert body["video"]["name"] == "passwd<script>" or body["video"]["name"] == "<script>"
    stored = registry.get(body["video"]["id"]).path
    assert stored.parent == registry.uploads and stored.name == body["video"]["id"] + ".mp4"
    assert all(p.parent == registry.uploads for p in registry.uploads.rglob("*"))


def test_nothing_outside_the_library_and_the_registry_is_served(client, planted):
    outside = planted["root"] / "secret.txt"
    outside.write_text("secret")
    for url in ["/api/tracks/8/audio", "/api/tracks/-1/audio", "/api/tracks/..%2F..%2Fsecret.txt/audio",
                "/api/tracks/0%2F..%2F..%2Fsecret.txt/audio", "/api/videos/..%2F..%2Fsecret.txt/file",
                "/api/videos/upload-0000/file", "/static/..%2F..%2F..%2Fpipeline.toml", "/static/../app.py",
                f"/api/videos/{outside}/file", "/api/videos/v0.mp4/file"]:
        response = client.get(url)
        assert response.status_code in (404, 422), (url, response.status_code)
        assert "secret" not in response.text
    one_line_error(client.get("/api/tracks/8/audio"), 404, "no track 8")
    one_line_error(client.get("/api/videos/nope/file"), 404, "no video")


def test_preview_is_the_video_with_the_track_from_the_start(client, planted):
    body = upload(client, planted["videos"] / "v4.mp4").json()
    top = body["results"][0]
    response = client.get(f"/api/videos/{body['video']['id']}/preview",
                          params={"track": top["id"], "start": top["start"], "mix": 0})
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].startswith("attachment")
    assert "v4%2Btrack4.mp4" in response.headers["content-disposition"]  # RFC 5987: v4+track4.mp4
    assert response.headers["x-preview-audio"] == "replace"
    out = planted["root"] / "preview.mp4"
    out.write_bytes(response.content)
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        assert abs(float(c.duration) / 1e6 - 3.0) < 0.3
    one_line_error(client.get(f"/api/videos/{body['video']['id']}/preview", params={"track": 99}), 404, "no track")
    assert not any(client.app.state.registry.previews.iterdir())  # made for one download, then removed


def test_concurrent_uploads_get_the_same_answers_as_one_at_a_time(client, planted):
    paths = [planted["videos"] / f"v{i}.mp4" for i in (0, 5, 7, 5)]
    alone = [upload(client, p).json()["results"] for p in paths]
    together: list = [None] * len(paths)

    def worker(n: int) -> None:
        together[n] = upload(client, paths[n]).json()["results"]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [[(r["track"], r["start"]) for r in rs] for rs in together] == \
        [[(r["track"], r["start"]) for r in rs] for rs in alone]


def test_old_uploads_are_deleted_beyond_keep_uploads(client, planted):
    ids = [upload(client, planted["videos"] / f"copy{i}.mp4").json()["video"]["id"] for i in range(4)]
    assert client.get(f"/api/videos/{ids[0]}/file").status_code == 404  # keep_uploads = 3
    assert client.get(f"/api/videos/{ids[-1]}/file").status_code == 200
    assert len(list(client.app.state.registry.uploads.iterdir())) == 3


def test_an_upload_in_use_survives_eviction_until_released(planted, tmp_path):
    registry = VideoRegistry(keep=1, root=tmp_path)
    try:
        first_id, part = registry.new_upload_path()
        part.write_bytes((planted["videos"] / "v0.mp4").read_bytes())
        first = registry.add_upload(first_id, part, "a.mp4")  # pinned for the uploading request
        second_id, part = registry.new_upload_path()
        part.write_bytes((planted["videos"] / "v1.mp4").read_bytes())
        registry.add_upload(second_id, part, "b.mp4")
        registry.release(second_id)
        assert registry.get(first_id) is None and first.path.is_file()  # evicted, still being used
        registry.release(first_id)
        assert not first.path.exists()
    finally:
        registry.close()


def test_the_page_and_the_openapi_description_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>mvbind" in page.text
    for asset in ("app.js", "style.css"):
        assert f"/static/{asset}" in page.text and client.get(f"/static/{asset}").status_code == 200
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/recommend"]["post"]["requestBody"]
    assert "application/octet-stream" in body["content"]
    assert {"/api/health", "/api/videos/{vid}/file", "/api/tracks/{track}/audio"} <= set(spec["paths"])
    docs = client.get("/docs")  # the OpenAPI page, from packaged assets (no CDN)
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_text_steering_on_a_library_that_cannot_be_steered_says_why(client, planted):
    steering = client.get("/api/health").json()["steering"]
    assert steering["available"] is False and "signal encoder" in steering["why_not"]
    assert str(planted["root"]) not in steering["why_not"]  # no server paths
    one_line_error(client.get("/api/search", params={"text": "calm piano"}), 422, "signal encoder")
    response = client.post(UPLOAD, params={"text": "calm piano", "name": "v0.mp4"},
                           content=(planted["videos"] / "v0.mp4").read_bytes())
    one_line_error(response, 422, "text steering needs ImageBind")
    one_line_error(client.get("/api/search", params={"text": "x", "k": 0}), 422, "k: ", "greater than or equal to 1")


def test_a_remote_bind_needs_to_be_asked_for():
    assert is_local("127.0.0.1") and is_local("localhost") and is_local("::1") and is_local("[::1]")
    assert not is_local("0.0.0.0") and not is_local("192.168.1.5") and not is_local("example.com")
    with pytest.raises(MvbindError, match="--allow-remote"):
        check_host("0.0.0.0", allow_remote=False)
    check_host("0.0.0.0", allow_remote=True)
    result = CliRunner().invoke(cli, ["serve", "--library", "x", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--allow-remote" in lines[0], result.output


def test_uploads_never_enter_the_feature_cache(client, planted):
    cache = Path(planted["config"].cache_dir)
    before = sorted(p.name for p in cache.rglob("*.h5"))
    fresh = planted["root"] / "fresh.mp4"
    run_ffmpeg("-i", str(planted["videos"] / "v2.mp4"), "-c", "copy", "-metadata", "comment=new", str(fresh))
    assert upload(client, fresh).status_code == 200
    assert sorted(p.name for p in cache.rglob("*.h5")) == before  # embedded in memory only


def test_the_registry_folder_is_removed_on_shutdown(planted):
    app = make_app(planted["config"], run="run", library="planted", progress=False)
    with TestClient(app) as c:
        root = c.app.state.registry.root
        assert upload(c, planted["videos"] / "v0.mp4").status_code == 200
        assert any(root.rglob("upload-*"))
    assert not root.exists()
    json.dumps(app.openapi())  # the schema is plain JSON
