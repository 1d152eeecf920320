"""The command line's error boundary: every user-facing failure is one line on stderr and exit 2."""

import errno
import re
import resource
import signal
import subprocess
import sys

import h5py
import pytest
from click.testing import CliRunner

from mvbind.cli import cli, os_error_line
from tests.media import make_video


def run(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def one_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"not really a video")
    (tmp_path / "cache").write_text("I am a file")
    line = one_line(run("extract", tmp_path / "videos", "--cache-dir", tmp_path / "cache", "--set",
                        "encoder.name=signal", "--workers", "0"))
    assert str(tmp_path / "cache") in line and "not a directory" in line.lower() and "choose a folder" in line


def test_library_name_with_a_path_is_refused(tmp_path):
    (tmp_path / "music").mkdir()
    line = one_line(run("index", tmp_path / "music", "--name", "../../etc/x", "--set",
                        f"library.dir={tmp_path / 'libs'}", "--arch", "tiny", "--weights", "random"))
    assert "a library name is a plain name" in line and not list(tmp_path.rglob("*.mvlib.h5"))


@pytest.mark.parametrize("dotted,value", [("video.crops", "2"), ("video.size", "0"), ("signal.hue_bins", "0"),
                                          ("extract.workers", "many"), ("nosuch.key", "1")])
def test_bad_settings_on_the_command_line(tmp_path, dotted, value):
    line = one_line(run("extract", tmp_path, "--set", f"{dotted}={value}"))
    assert dotted.split(".")[-1] in line


def test_os_errors_become_the_fix_not_a_traceback():
    full = OSError(errno.ENOSPC, "No space left on device", "/data/cache/x.h5")
    assert os_error_line(full) == "/data/cache/x.h5: No space left on device; the disk is full; free space or " \
                                  "point paths.cache / paths.runs / library.dir elsewhere"
    # h5py reports a full disk as a RuntimeError carrying the errno in its text
    h5 = RuntimeError("Can't write data (file write failed: ..., errno = 28, error message = 'No space left')")
    assert "the disk is full" in os_error_line(h5)
    assert os_error_line(RuntimeError("a bug")) is None  # not an OS failure: a real traceback


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "cache").write_text("a file")
    args = ["extract", tmp_path, "--cache-dir", tmp_path / "cache", "--set", "encoder.name=signal"]
    assert run(*args).exit_code == 2
    result = run("--debug", *args)
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


@pytest.mark.parametrize("limit", [1024, 8192])
def test_a_write_that_runs_out_of_room_is_one_line_and_leaves_nothing_partial(tmp_path, limit):
    # A file-size limit makes every write past `limit` bytes fail (EFBIG) the way a full disk does
    # (ENOSPC): the namespace's settings (~3 KB) or the first shard (~17 KB) can't be written. The
    # command must end in one line, leave no temporary or partial file, and nothing it committed
    # may be unreadable.
    videos = tmp_path / "videos"
    for i in range(3):
        make_video(videos / f"v{i}.mp4", duration=2.0, size=(64, 112), freq=300 + 100 * i)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "mvbind", "extract", str(videos), "--set", "encoder.name=signal", "--workers", "0"]
    # First once without a limit into another cache: libraries write their own caches on first use
    # (numba's compiled kernels, bytecode), which must not be what hits the limit.
    warm = subprocess.run([*cmd, "--cache-dir", str(tmp_path / "warm")], capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr[-2000:]

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([*cmd, "--cache-dir", str(cache)], preexec_fn=limited, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = re.findall(r"error: [^\r\n]*", proc.stderr)  # (the progress bar shares stderr)
    assert len(errors) == 1 and "size limit" in errors[0] and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(cache) in errors[0]  # names the file it could not write
    leftovers = [p.name for p in cache.rglob("*") if p.name.startswith((".tmp-", ".settings-"))]
    assert leftovers == []
    for shard in cache.rglob("*.h5"):
        with h5py.File(shard, "r") as f:
            assert f["video"].shape[0] == f.attrs["n_items"]
