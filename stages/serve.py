"""`serve`: a web page and JSON API that recommend library tracks for an uploaded video.

    run + library + encoder ─► one `Recommender` (loaded once, shared by every request)
                             ─► FastAPI app (mvbind.pipeline.serve.app) under uvicorn, on localhost

FastAPI on uvicorn: the well-kept standard for a Python JSON API; it gives request validation, an
OpenAPI page (/docs) and Starlette's range-request file responses (the page seeks tracks) for free.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mvbind.errors import MvbindError
from mvbind.pipeline.config import Config
from mvbind.pipeline.console import say
from mvbind.pipeline.library.recommender import Recommender

EXTRA_HINT = "install the serve extra: pip install 'mvbind[serve]' (scripts/setup.sh does)"


def is_local(host: str) -> bool:
    """True for loopback addresses and 'localhost' (the only binds allowed without --allow-remote)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> None:
    if not is_local(host) and not allow_remote:
        raise MvbindError(f"--host {host} would expose the server beyond this machine; it has no authentication. "
                          "Pass --allow-remote as well if that is what you want (serve.host)")


def make_app(config: Config, *, run: str | Path | None, library: str | Path, recommender: Recommender | None = None,
             progress: bool = True):
    """The ASGI app over a `Recommender` (built here unless given): for embedding in another server or tests."""
    try:
        from mvbind.pipeline.serve.app import create_app
    except ModuleNotFoundError as err:
        raise MvbindError(f"mvbind serve needs {err.name}: {EXTRA_HINT}") from None
    if recommender is None:
        # cache_writes=False: visitors' uploads are embedded in memory, never committed to the feature cache a
        # researcher trains on (a later `train` would otherwise pick them up as data)
        recommender = Recommender(config, library=library, run=run, progress=progress, cache_writes=False)
    return create_app(recommender, config)


def serve(config: Config, *, run: str | Path | None, library: str | Path, host: str | None = None,
          port: int | None = None, allow_remote: bool = False) -> None:
    """Load everything once, then serve until interrupted (Ctrl-C)."""
    host = host or config.serve.host
    port = config.serve.port if port is None else port
    check_host(host, allow_remote)
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise MvbindError(f"mvbind serve needs uvicorn: {EXTRA_HINT}") from None
    app = make_app(config, run=run, library=library)
    shown = f"[{host}]" if ":" in host else host
    say(f"mvbind serve: open http://{shown}:{port}/ (API docs at /docs); Ctrl-C stops it")
    uvicorn.run(app, host=host, port=port, log_level="warning")
