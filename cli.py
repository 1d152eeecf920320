"""mvbind command line: a thin table from sub-command to the stage functions that do the work."""

import click

from stages.cache_info import cache_group
from stages.demo import demo_command
from stages.demo_data import demo_data_command
from stages.evaluate import eval_command
from stages.extract import extract_command
from stages.index import index_command
from stages.recommend import recommend_command
from stages.train import train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """mvbind: recommend background music for short videos (MVBind on ImageBind)."""


cli.add_command(extract_command, "extract")
cli.add_command(cache_group, "cache")
cli.add_command(demo_data_command, "demo-data")
cli.add_command(demo_command, "demo")
cli.add_command(train_command, "train")
cli.add_command(eval_command, "eval")
cli.add_command(index_command, "index")
cli.add_command(recommend_command, "recommend")

if __name__ == "__main__":
    cli()
