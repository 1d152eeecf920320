"""mvbind command line: a thin table from sub-command to the stage functions that do the work."""

import click

from stages.cache_info import cache_group
from stages.extract import extract_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """mvbind: recommend background music for short videos (MVBind on ImageBind)."""


cli.add_command(extract_command, "extract")
cli.add_command(cache_group, "cache")

if __name__ == "__main__":
    cli()
