"""Checkpoint resolution, download, loading and digest (no internet: a local HTTP server only)."""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mvbind.errors import MvbindError
from mvbind.pipeline.encoders.imagebind.model import build_imagebind
from mvbind.pipeline.encoders.imagebind.weights import (
    WEIGHTS_FILENAME,
    default_weights_path,
    file_digest,
    load_weights,
    resolve_weights,
)


def one_line(err: pytest.ExceptionInfo[MvbindError]) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MVBIND_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A full-model-style checkpoint: the tiny audio+vision state plus text/depth entries to drop."""
    model = build_imagebind("tiny", seed=3).eval()
    state = dict(model.state_dict())
    state["modality_preprocessors.text.pos_embed"] = torch.zeros(1, 77, 32)
    state["modality_trunks.text.blocks.0.attn.in_proj_weight"] = torch.zeros(96, 32)
    state["modality_heads.depth.2.weight"] = torch.zeros(32, 32)
    state["modality_postprocessors.thermal.1.log_logit_scale"] = torch.tensor(2.3)
    path = tmp_path_factory.mktemp("ckpt") / WEIGHTS_FILENAME
    torch.save(state, path)
    return path, model


def _probe() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"audio": torch.randn(2, 1, 128, 204, generator=g), "vision": torch.randn(2, 3, 2, 224, 224, generator=g)}


def _embed(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        return model.embed_audio(x["audio"]), model.embed_vision(x["vision"])


# ---------------------------------------------------------------------------- loading


def test_load_weights_drops_other_modalities(tiny_checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, source = tiny_checkpoint
    target = build_imagebind("tiny", seed=99).eval()
    x = _probe()
    before = _embed(target, x)
    load_weights(target, path)
    after, want = _embed(target, x), _embed(source, x)
    for got, ref, old in zip(after, want, before):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
        assert not torch.equal(got, old)


def test_load_weights_into_meta_model(tiny_checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, source = tiny_checkpoint
    with torch.device("meta"):
        target = build_imagebind("tiny")
    load_weights(target, path)
    target.eval()
    assert not any(t.is_meta for t in target.state_dict().values())
    for got, ref in zip(_embed(target, _probe()), _embed(source, _probe())):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_legacy_format_checkpoint_loads(tmp_path: Path, tiny_checkpoint: tuple[Path, torch.nn.Module]) -> None:
    _, source = tiny_checkpoint
    path = tmp_path / "legacy.pth"  # pre-zip serialization cannot be memory-mapped
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)
    target = build_imagebind("tiny", seed=1).eval()
    load_weights(target, path)
    for got, ref in zip(_embed(target, _probe()), _embed(source, _probe())):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_checkpoint_missing_keys_names_file(tmp_path: Path, tiny_checkpoint: tuple[Path, torch.nn.Module]) -> None:
    _, source = tiny_checkpoint
    state = dict(source.state_dict())
    del state["modality_heads.audio.2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(MvbindError) as err:
        load_weights(build_imagebind("tiny"), path)
    msg = one_line(err)
    assert str(path) in msg and "modality_heads.audio.2.weight" in msg


def test_wrong_architecture_names_file(tiny_checkpoint: tuple[Path, torch.nn.Module]) -> None:
    path, _ = tiny_checkpoint
    with torch.device("meta"):
        huge = build_imagebind("huge")
    with pytest.raises(MvbindError) as err:
        load_weights(huge, path)
    assert str(path) in one_line(err)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10, b"PK\x03\x04broken zip"])
def test_not_a_checkpoint_names_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(content)
    with pytest.raises(MvbindError) as err:
        load_weights(build_imagebind("tiny"), path)
    assert str(path) in one_line(err)


def test_non_tensor_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(MvbindError) as err:
        load_weights(build_imagebind("tiny"), path)
    assert str(path) in one_line(err)


# ---------------------------------------------------------------------------- resolving


def test_default_path_follows_mvbind_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_weights_path() == home / WEIGHTS_FILENAME
    monkeypatch.delenv("MVBIND_HOME")
    assert default_weights_path() == Path.home() / ".cache" / "mvbind" / WEIGHTS_FILENAME


def test_configured_path_is_used_as_is(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "my.pth"
    path.write_bytes(b"x")
    assert resolve_weights(str(path), download=False) == path


def test_missing_configured_path_is_one_line_error(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "nowhere" / "imagebind_huge.pth"
    with pytest.raises(MvbindError) as err:
        resolve_weights(str(path))
    msg = one_line(err)
    assert str(path) in msg and "encoder.weights" in msg
    assert not path.parent.exists()  # a configured path is never downloaded to


def test_existing_default_is_used_without_network(home: Path) -> None:
    home.mkdir()
    (home / WEIGHTS_FILENAME).write_bytes(b"x")
    assert resolve_weights(None, url="http://127.0.0.1:1/never") == home / WEIGHTS_FILENAME
    assert resolve_weights("", url="http://127.0.0.1:1/never") == home / WEIGHTS_FILENAME


def test_no_download_when_disabled(home: Path) -> None:
    with pytest.raises(MvbindError) as err:
        resolve_weights(None, download=False)
    assert str(home / WEIGHTS_FILENAME) in one_line(err)


# ---------------------------------------------------------------------------- downloading


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, int]] = {}  # path -> (body, declared Content-Length)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, length = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, tuple[bytes, int]]]]:
    """A real HTTP server on 127.0.0.1; tests fill its routes."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    routes: dict[str, tuple[bytes, int]] = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _checkpoint_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"modality_heads.audio.2.weight": torch.arange(12.0).reshape(3, 4)}, buf)
    return buf.getvalue()


def test_download_to_part_then_rename(home: Path, server: tuple[str, dict]) -> None:
    base, routes = server
    body = _checkpoint_bytes()
    routes["/w.pth"] = (body, len(body))
    path = resolve_weights(None, progress=False, url=f"{base}/w.pth")
    assert path == home / WEIGHTS_FILENAME
    assert path.read_bytes() == body
    assert not (home / f"{WEIGHTS_FILENAME}.part").exists()
    # The digest was recorded while downloading and is served from the sidecar.
    assert (home / f"{WEIGHTS_FILENAME}.sha256").is_file()
    assert file_digest(path) == hashlib.sha256(body).hexdigest()
    # A second resolve finds the file and does not download again.
    routes.clear()
    assert resolve_weights(None, progress=False, url=f"{base}/w.pth") == path


def test_short_download_is_rejected(home: Path, server: tuple[str, dict]) -> None:
    base, routes = server
    body = _checkpoint_bytes()
    routes["/short.pth"] = (body[:-100], len(body))  # server promises more than it sends
    with pytest.raises(MvbindError) as err:
        resolve_weights(None, progress=False, url=f"{base}/short.pth")
    msg = one_line(err)
    assert f"{base}/short.pth" in msg and str(home / WEIGHTS_FILENAME) in msg
    assert not (home / WEIGHTS_FILENAME).exists()
    assert not (home / f"{WEIGHTS_FILENAME}.part").exists()


def test_download_that_is_not_a_checkpoint_is_rejected(home: Path, server: tuple[str, dict]) -> None:
    base, routes = server
    routes["/page.html"] = (b"<html>not here</html>", 21)
    with pytest.raises(MvbindError) as err:
        resolve_weights(None, progress=False, url=f"{base}/page.html")
    assert "not a torch checkpoint" in one_line(err)
    assert not (home / WEIGHTS_FILENAME).exists()
    assert not (home / f"{WEIGHTS_FILENAME}.part").exists()


def test_http_error_is_one_line(home: Path, server: tuple[str, dict]) -> None:
    base, _ = server
    with pytest.raises(MvbindError) as err:
        resolve_weights(None, progress=False, url=f"{base}/missing.pth")
    msg = one_line(err)
    assert "404" in msg and str(home / WEIGHTS_FILENAME) in msg


def test_unreachable_url_says_where_to_put_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    with socket.socket() as s:  # a port that was free a moment ago and now has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/imagebind_huge.pth"
    with pytest.raises(MvbindError) as err:
        resolve_weights(None, progress=False, url=url)
    msg = one_line(err)
    assert f"could not reach {url}" in msg
    assert f"place {WEIGHTS_FILENAME} at {home / WEIGHTS_FILENAME}" in msg and "encoder.weights" in msg
    assert not (home / f"{WEIGHTS_FILENAME}.part").exists()


# ---------------------------------------------------------------------------- digest


def test_file_digest_is_cached_and_follows_changes(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(b"a" * 1000)
    sidecar = tmp_path / "blob.bin.sha256"
    first = file_digest(path)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert sidecar.is_file()

    # Same size and mtime: the sidecar answers (proved by planting a different value).
    sidecar.write_text(sidecar.read_text().replace(first, "0" * 64))
    assert file_digest(path) == "0" * 64

    # Same size, new content and mtime: recomputed.
    st = path.stat()
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert file_digest(path) == hashlib.sha256(b"b" * 1000).hexdigest()

    # Different size: recomputed; a corrupt sidecar is ignored.
    path.write_bytes(b"c" * 10)
    sidecar.write_text("{not json")
    assert file_digest(path) == hashlib.sha256(b"c" * 10).hexdigest()


def test_file_digest_of_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MvbindError) as err:
        file_digest(tmp_path / "absent.pth")
    assert str(tmp_path / "absent.pth") in one_line(err)
