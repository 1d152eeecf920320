"""mvbind's command line: all click code lives here; every command parses flags and calls one stage
function (`mvbind.stages.*`), which a notebook or test can call with the same effect.

Run as `mvbind …` (the console script), `python -m mvbind …`, or `python cli.py …` in a checkout.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mvbind.errors import MvbindError, errno_of
from mvbind.pipeline.binding.report import markdown_table
from mvbind.pipeline.config import Config, load_config
from mvbind.pipeline.console import say
from mvbind.stages.cache_info import cache_info, cache_status, cache_verify, format_info, format_status, format_verify
from mvbind.stages.demo import run_demo
from mvbind.stages.demo_data import demo_data
from mvbind.stages.evaluate import evaluate
from mvbind.stages.extract import extract, plan
from mvbind.stages.import_features import import_features
from mvbind.stages.index import index
from mvbind.stages.recommend import recommend
from mvbind.stages.serve import serve
from mvbind.stages.sweep import parse_grid, sweep
from mvbind.stages.train import train

# ── shared plumbing: --config/--set, one-line errors, in-process runs ──────────────────────────


def config_options(func: Callable) -> Callable:
    """Add --config PATH and repeatable --set section.key=value to a click command."""
    func = click.option(
        "--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
        help="Override any pipeline.toml setting, e.g. --set extract.workers=4 (repeatable).",
    )(func)
    func = click.option(
        "--config", "config_path", type=click.Path(dir_okay=False), default=None,
        help="Settings file (default: the shipped pipeline.toml).",
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


# What to do about an OS error, by errno: the second half of its one-line message.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free space or point paths.cache / paths.runs / library.dir elsewhere",
    errno.EDQUOT: "the disk quota is exhausted; free space or point paths.cache elsewhere",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "permission denied; choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose a folder",
    errno.EISDIR: "this is a folder, not a file; pass a file",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EFBIG: "a file size limit was hit (ulimit -f, or the file system's); raise it or write elsewhere",
}


def os_error_line(err: BaseException) -> str | None:
    """One line for an OS-level failure (also h5py's, which wrap errno in a RuntimeError), else None."""
    code = errno_of(err)
    if code is None:
        return None
    name = getattr(err, "filename", None)
    what = os.strerror(code)
    fix = _OS_FIXES.get(code, "check the path and try again")
    return f"{name}: {what}; {fix}" if name else f"{what}; {fix}"


def debugging() -> bool:
    """`mvbind --debug …` (this invocation) or MVBIND_DEBUG=1: tracebacks instead of one-line errors."""
    ctx = click.get_current_context(silent=True)
    flag = bool(ctx is not None and ctx.find_root().params.get("debug"))
    return flag or os.environ.get("MVBIND_DEBUG", "") not in ("", "0")


def one_line_errors(func: Callable) -> Callable:
    """Report a user-facing failure as one line on stderr and exit 2, instead of a traceback:
    MvbindError (a bad file or setting), and OS errors (disk full, read-only, permissions, a file
    where a folder should be) with the fix. `--debug` (MVBIND_DEBUG=1) shows the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MvbindError as err:
            if debugging():
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(2)
        except (OSError, RuntimeError) as err:
            line = os_error_line(err)
            if line is None or debugging():
                raise
            click.echo(f"error: {line}", err=True)
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


# ── commands ─────────────────────────────────────────────────────────────────────────────────
@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@config_options
@click.option("--cache-dir", help="Feature cache directory (paths.cache).")
@click.option("--arch", help="ImageBind architecture: huge, small or tiny (encoder.arch).")
@click.option("--weights", help='Weights file, or "random" for random init (encoder.weights).')
@click.option("--device", help="auto, cpu, cuda or cuda:N (encoder.device).")
@click.option("--batch-size", type=int, help="Videos per forward pass (encoder.batch_size).")
@click.option("--workers", type=int, help="Decoding worker processes (extract.workers).")
@click.option("--num-shards", type=int, help="Number of partitions N (extract.num_shards).")
@click.option("--shard-index", type=int, help="This job's partition i in [0, N) (extract.shard_index).")
@click.option("--retry-failed", is_flag=True, default=None, help="Retry items that failed in earlier runs.")
@click.option("--borders/--no-borders", default=None, help="MVBind black-border removal (video.remove_borders).")
@click.option("--engine", type=click.Choice(["local", "gpus", "ray"]), default=None,
              help="Where partitions run (extract.engine): this process, one process per device, or Ray tasks.")
@click.option("--devices", help='Engine gpus: devices, e.g. "cuda:0,cuda:1" or "cpu,cpu" (extract.devices).')
@click.option("--item-timeout", type=float, help="Seconds one input may take; past it, failed (extract.item_timeout).")
@click.option("--plan-only", is_flag=True, help="Hash every input once and write the source's plan into the "
                                                "namespace (partitions for --num-shards); extract nothing.")
@one_line_errors
def extract_command(source, config_path, sets, cache_dir, arch, weights, device, batch_size, workers,
                    num_shards, shard_index, retry_failed, borders, engine, devices, item_timeout, plan_only):
    """Extract audio and video embeddings of SOURCE (a folder of videos or a CSV/JSONL manifest).

    The encoder is encoder.name in pipeline.toml: imagebind (default) or signal (hand-crafted features).
    """
    config = resolve_config(config_path, sets, {
        "paths.cache": cache_dir, "encoder.arch": arch, "encoder.weights": weights, "encoder.device": device,
        "encoder.batch_size": batch_size, "extract.workers": workers, "extract.num_shards": num_shards,
        "extract.shard_index": shard_index, "extract.retry_failed": retry_failed, "video.remove_borders": borders,
        "extract.engine": engine, "extract.devices": devices, "extract.item_timeout": item_timeout,
    })
    summary = plan(config, source) if plan_only else extract(config, source)
    for line in summary.lines():
        click.echo(line)


@click.command("import-features")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@config_options
@click.option("--name", default=None, help="Name of the imported features (default: FILE's name without suffix); "
                                           "with the file's content hash it makes the namespace's fingerprint.")
@click.option("--cache-dir", help="Feature cache directory (paths.cache).")
@one_line_errors
def import_features_command(file, config_path, sets, name, cache_dir):
    """Import pre-extracted features from FILE (.npz, HDF5, or Parquet with pyarrow) into a cache namespace.

    FILE holds `ids` (n,), `audio` and `video` ((n, dim) pooled or (n, clips, dim) per clip; the dims may
    differ), and optionally `music_id`, `split` (train/val/test), `audio_mask` and `video_mask` (n,).
    Then: mvbind train --cache PREFIX, mvbind eval RUN. Importing the same file again writes nothing.
    """
    config = resolve_config(config_path, sets, {"paths.cache": cache_dir})
    summary = import_features(config, file, name=name)
    for line in summary.lines():
        click.echo(line)


@click.group()
def cache_group() -> None:
    """Inspect the feature cache."""


def cache_options(func: Callable) -> Callable:
    """The options every `cache` sub-command takes: a fingerprint PREFIX, --config/--set, --cache-dir, --json."""
    func = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")(func)
    func = click.option("--cache-dir", help="Feature cache directory (paths.cache).")(func)
    return click.argument("prefix", required=False)(config_options(func))


def echo_reports(reports: list[dict], lines: list[str], as_json: bool) -> None:
    """A cache sub-command's answer: JSON, or its formatted lines."""
    for line in [json.dumps(reports, indent=2)] if as_json else lines:
        click.echo(line)


@cache_group.command("verify")
@cache_options
@one_line_errors
def verify_command(prefix, config_path, sets, cache_dir, as_json):
    """Read every shard in full: damaged shards (checksums), duplicate keys, true item counts; exit 1 on damage."""
    config = resolve_config(config_path, sets, {"paths.cache": cache_dir})
    reports = cache_verify(config.cache_dir, prefix)
    echo_reports(reports, format_verify(reports) or [f"{config.cache_dir}: no namespaces"], as_json)
    if any(r["damaged"] for r in reports):
        sys.exit(1)


@cache_group.command("status")
@cache_options
@one_line_errors
def status_command(prefix, config_path, sets, cache_dir, as_json):
    """Where extraction stands (also while jobs run): done / failed / remaining from the plan, each
    partition job's progress, rate and ETA."""
    config = resolve_config(config_path, sets, {"paths.cache": cache_dir})
    reports = cache_status(config.cache_dir, prefix)
    echo_reports(reports, format_status(reports, config.cache_dir), as_json)


@cache_group.command("info")
@cache_options
@click.option("-v", "--verbose", is_flag=True, help="Show every resolved setting.")
@one_line_errors
def info_command(prefix, config_path, sets, cache_dir, as_json, verbose):
    """Namespaces in the cache (optionally only the one matching fingerprint PREFIX)."""
    config = resolve_config(config_path, sets, {"paths.cache": cache_dir})
    infos = cache_info(config.cache_dir, prefix)
    echo_reports(infos, format_info(infos, config.cache_dir, verbose), as_json)


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo/data"))
@click.option("--videos", type=click.IntRange(min=1), default=300, show_default=True, help="Number of videos.")
@click.option("--library-tracks", type=click.IntRange(min=0), default=40, show_default=True,
              help="Distractor tracks in the library, besides every track the videos use.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same files.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="Rendering processes (0 = in this process).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo collection in OUT_DIR.")
@one_line_errors
def demo_data_command(out_dir, videos, library_tracks, seed, workers, overwrite):
    """Write a synthetic demo collection to OUT_DIR (default demo/data): vertical short videos whose
    cuts, motion, palette and brightness follow their generated music, a manifest with music_ids,
    a library of longer tracks (used + distractors) and ground truth in demo.json."""
    summary = demo_data(out_dir, videos=videos, library_tracks=library_tracks, seed=seed,
                        workers=workers, overwrite=overwrite)
    for line in summary.lines():
        click.echo(line)


@click.command()
@click.argument("workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"))
@click.option("--videos", type=int, default=300, show_default=True, help="Demo videos to generate.")
@click.option("--library-tracks", type=int, default=20, show_default=True, help="Distractor tracks in the library.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def demo_command(workdir, videos, library_tracks, seed, workers, quiet):
    """Run the whole job offline on a generated demo collection in WORKDIR (default ./demo)."""
    run_demo(workdir, videos=videos, library_tracks=library_tracks, seed=seed, workers=workers,
             progress=not quiet)


# -- command line ------------------------------------------------------------------------
@click.command("train")
@config_options
@click.option("--cache", "cache_prefix", default=None, metavar="PREFIX",
              help="Fingerprint prefix of the cache namespace (default: the one pipeline.toml's settings name).")
@click.option("--name", default=None, help="Run directory name under paths.runs (default: a timestamp).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory of the same name.")
@click.option("--resume", default=None, metavar="RUN",
              help="Continue a killed run (name under paths.runs or directory) from its last epoch, with the "
                   "same settings; ends with the weights an uninterrupted run would have.")
@click.option("--epochs", type=int, default=None, help="Shortcut for --set train.epochs=N.")
@click.option("--batch-size", type=int, default=None, help="Shortcut for --set train.batch_size=N.")
@click.option("--lr", type=float, default=None, help="Shortcut for --set train.lr=X.")
@click.option("--seed", type=int, default=None, help="Shortcut for --set train.seed=N.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def train_command(config_path, sets, cache_prefix, name, overwrite, resume, epochs, batch_size, lr, seed, quiet):
    """Train the binding projector on cached features; writes runs/<name>/ (or continues one: --resume RUN)."""
    config = resolve_config(config_path, sets, {"train.cache": cache_prefix, "train.epochs": epochs,
                                                "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed})
    options = {"config": config_path, "set": list(sets), "cache": cache_prefix, "name": name, "overwrite": overwrite}
    run_dir = train(config, name=name, overwrite=overwrite, progress=not quiet, cli_options=options, resume=resume)
    click.echo(str(run_dir))


@click.command("eval")
@config_options
@click.argument("runs", nargs=-1)
@click.option("--cache", "cache_prefix", default=None, metavar="PREFIX",
              help="Fingerprint prefix of the namespace (baselines without runs; with runs, "
                   "each checkpoint must match it).")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default=None,
              help="Which split is the gallery (default: eval.split, normally test).")
@click.option("--name", default=None, help="Report directory name under <paths.runs>/_evals (default: a timestamp).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Report directory (overrides --name).")
@click.option("--overwrite", is_flag=True, help="Replace an existing report directory.")
@click.option("--no-baselines", is_flag=True, help="Leave out chance and zero-shot ImageBind.")
@one_line_errors
def eval_command(config_path, sets, runs, cache_prefix, split, name, out, overwrite, no_baselines):
    """Recall@K, median/mean rank both ways for RUNS (names or directories) plus baselines."""
    config = resolve_config(config_path, sets, {"eval.split": split})
    out_dir, metrics = evaluate(config, list(runs), cache=cache_prefix, name=name, out=out, overwrite=overwrite,
                                baselines=False if no_baselines else None)
    click.echo(markdown_table(metrics["rows"], metrics["ks"]), nl=False)
    click.echo(f"\nwritten to {out_dir}", err=True)


@click.command("sweep")
@config_options
@click.option("--grid", "grids", multiple=True, metavar="train.KEY=V1,V2,…",
              help="One axis of the grid, e.g. --grid train.projector=linear,residual (repeatable).")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Trials per combination, seeded train.seed, train.seed+1, ….")
@click.option("--cache", "cache_prefix", default=None, metavar="PREFIX",
              help="Fingerprint prefix of the cache namespace (default: the one pipeline.toml's settings name).")
@click.option("--name", default="sweep", show_default=True, help="Sweep folder under paths.runs.")
@click.option("--overwrite", is_flag=True, help="Retrain trials whose run directories exist but differ.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def sweep_command(config_path, sets, grids, seeds, cache_prefix, name, overwrite, quiet):
    """Train a grid of stage-two settings × seeds on one cache; one eval table of mean ± std per combination."""
    config = resolve_config(config_path, sets, {"train.cache": cache_prefix})
    result = sweep(config, parse_grid(grids), seeds=seeds, name=name, overwrite=overwrite, progress=not quiet)
    click.echo(result.table, nl=False)
    click.echo(f"\nwritten to {result.out_dir}", err=True)


@click.command("index")
@click.argument("source", type=click.Path(path_type=Path))
@config_options
@click.option("--run", default=None, help="Run whose audio head projects the windows (name under paths.runs or a "
                                          "run directory); without it: zero-shot, the encoder's raw space.")
@click.option("--name", default=None, help="Library name: writes <library.dir>/NAME.mvlib.h5 (default: SOURCE's name).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Library file (overrides --name).")
@click.option("--overwrite", is_flag=True, help="Replace an existing library file.")
@click.option("--index", "index_kind", type=click.Choice(["auto", "exact", "faiss"]), default=None,
              help="Search index (library.index): auto builds FAISS above library.faiss_threshold windows.")
@click.option("--hop", type=float, default=None, help="Seconds between windows (library.hop).")
@click.option("--cache-dir", help="Feature cache directory (paths.cache).")
@click.option("--arch", help="ImageBind architecture: huge, small or tiny (encoder.arch).")
@click.option("--weights", help='Weights file, or "random" for random init (encoder.weights).')
@click.option("--device", help="auto, cpu, cuda or cuda:N (encoder.device).")
@click.option("--batch-size", type=int, help="Tracks per forward pass (encoder.batch_size).")
@click.option("--workers", type=int, help="Decoding worker processes (extract.workers).")
@click.option("--retry-failed", is_flag=True, default=None, help="Retry files that failed in earlier runs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def index_command(source, config_path, sets, run, name, out, overwrite, index_kind, hop, cache_dir, arch, weights,
                  device, batch_size, workers, retry_failed, quiet):
    """Build a music library from SOURCE (a folder of mp3/ogg/wav/flac/m4a/opus files, or a CSV/JSONL manifest)."""
    config = resolve_config(config_path, sets, {
        "paths.cache": cache_dir, "encoder.arch": arch, "encoder.weights": weights, "encoder.device": device,
        "encoder.batch_size": batch_size, "extract.workers": workers, "library.hop": hop,
        "extract.retry_failed": retry_failed})
    summary = index(config, source, run=run, out=out, name=name, overwrite=overwrite, index_kind=index_kind,
                    progress=not quiet)
    for line in summary.lines():
        click.echo(line)


@click.command("recommend")
@click.argument("videos", nargs=-1, type=click.Path(path_type=Path))
@config_options
@click.option("--library", "library", required=True, help="Library file, or a name in library.dir (`mvbind index`).")
@click.option("--run", default=None, help="The run the library was indexed with; without it: zero-shot.")
@click.option("-k", "k", type=int, default=None, help="Tracks per video (recommend.k).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--preview", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each video with its top track from the suggested start into this folder.")
@click.option("--mix", is_flag=True, default=None, help="Preview: mix the track under the video's own audio "
                                                       "(recommend.preview_audio=mix) instead of replacing it.")
@click.option("--search", type=click.Choice(["auto", "exact", "faiss"]), default=None,
              help="auto: FAISS when the library has an index (recommend.search).")
@click.option("--text", default=None, help='Steer with words, e.g. "calm piano" (ImageBind\'s text tower, '
                                           "zero-shot); without VIDEOS: search the library by the text alone.")
@click.option("--text-weight", type=float, default=None,
              help="Weight of the text in [0, 1] (recommend.text_weight, default 0.3).")
@click.option("--cache-dir", help="Feature cache directory (paths.cache).")
@click.option("--arch", help="ImageBind architecture: huge, small or tiny (encoder.arch).")
@click.option("--weights", help='Weights file, or "random" for random init (encoder.weights).')
@click.option("--device", help="auto, cpu, cuda or cuda:N (encoder.device).")
@click.option("--workers", type=int, help="Decoding worker processes (extract.workers).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def recommend_command(videos, config_path, sets, library, run, k, as_json, preview, mix, search, text, text_weight,
                      cache_dir, arch, weights, device, workers, quiet):
    """Recommend tracks from a library for VIDEOS, each with a suggested start time (optionally steered by
    --text; with --text and no VIDEOS, search the library by text)."""
    config = resolve_config(config_path, sets, {
        "paths.cache": cache_dir, "encoder.arch": arch, "encoder.weights": weights, "encoder.device": device,
        "extract.workers": workers, "recommend.search": search, "recommend.preview_audio": "mix" if mix else None,
        "recommend.text_weight": text_weight})
    report = recommend(config, list(videos), library=library, run=run, k=k, preview=preview, text=text,
                       progress=not quiet and not as_json)
    for note in report.notes:
        say(note)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.table(), nl=False)


@click.command("serve")
@config_options
@click.option("--library", "library", required=True, help="Library file, or a name in library.dir (`mvbind index`).")
@click.option("--run", default=None, help="The run the library was indexed with; without it: zero-shot.")
@click.option("--host", default=None, help="Address to bind (serve.host, default 127.0.0.1: this machine only).")
@click.option("--port", type=int, default=None, help="Port (serve.port, default 8000; 0 = any free port).")
@click.option("--allow-remote", is_flag=True, help="Allow a --host other than localhost (the server has no login).")
@click.option("--cache-dir", help="Feature cache directory (paths.cache).")
@click.option("--arch", help="ImageBind architecture: huge, small or tiny (encoder.arch).")
@click.option("--weights", help='Weights file, or "random" for random init (encoder.weights).')
@click.option("--device", help="auto, cpu, cuda or cuda:N (encoder.device).")
@one_line_errors
def serve_command(config_path, sets, library, run, host, port, allow_remote, cache_dir, arch, weights, device):
    """A web page (and JSON API) on which a person drops a video and hears the library's tracks that fit it."""
    config = resolve_config(config_path, sets, {
        "paths.cache": cache_dir, "encoder.arch": arch, "encoder.weights": weights, "encoder.device": device,
        "serve.host": host, "serve.port": port})
    serve(config, run=run, library=library, allow_remote=allow_remote)


# ── the table: sub-command → command ────────────────────────────────────────────────────────
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors (also MVBIND_DEBUG=1).")
def cli(debug: bool) -> None:
    """mvbind: recommend background music for short videos (MVBind on ImageBind)."""


cli.add_command(extract_command, "extract")
cli.add_command(import_features_command, "import-features")
cli.add_command(cache_group, "cache")
cli.add_command(demo_data_command, "demo-data")
cli.add_command(demo_command, "demo")
cli.add_command(train_command, "train")
cli.add_command(eval_command, "eval")
cli.add_command(sweep_command, "sweep")
cli.add_command(index_command, "index")
cli.add_command(recommend_command, "recommend")
cli.add_command(serve_command, "serve")


def main(argv: list[str] | None = None) -> int:
    """In-process entry (tests, notebooks): `main(["train", "--epochs", "3"])`; returns the exit code."""
    return run_in_process(cli, argv, "mvbind")


if __name__ == "__main__":
    sys.exit(main())
