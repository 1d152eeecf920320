"""Shared command-line plumbing: --config/--set options and one-line error reporting."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from pipeline.config import Config, load_config
from pipeline.errors import MvbindError


def config_options(func: Callable) -> Callable:
    """Add --config PATH and repeatable --set section.key=value to a click command."""
    func = click.option(
        "--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
        help="Override any pipeline.toml setting, e.g. --set extract.workers=4 (repeatable).",
    )(func)
    func = click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), default=None,
        help="Settings file (default: pipeline.toml beside cli.py).",
    )(func)
    return func


def resolve_config(config_path: str | None, sets: tuple[str, ...], flags: dict[str, Any] | None = None) -> Config:
    """Load the config with --set overrides and then dedicated flags (flags win; None = not given)."""
    overrides: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"{item!r}: expected SECTION.KEY=VALUE", param_hint="--set")
        overrides[key.strip()] = value.strip()
    overrides.update({k: v for k, v in (flags or {}).items() if v is not None})
    return load_config(config_path, overrides)


def one_line_errors(func: Callable) -> Callable:
    """Report MvbindError as one line on stderr and exit 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MvbindError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper


def run_in_process(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run a click command in-process (tests, notebooks) and return its exit code instead of exiting."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    return 0
