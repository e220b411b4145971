"""The `batchpool` command: thin click commands over the library."""

from __future__ import annotations

import logging

import click

from batchpool import __version__
from batchpool.cli.devcluster import dev_cluster
from batchpool.cli.job import job
from batchpool.cli.pool import node, pool
from batchpool.cli.run import run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchpool")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """batchpool: run CPU-heavy batch jobs on a pool of machines reached over SSH.

    With no configuration the pool `local` (this machine, one slot per core) is used.
    State lives under $BATCHPOOL_HOME. Start with `batchpool run SPEC`.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


main.add_command(run)
main.add_command(job)
main.add_command(pool)
main.add_command(node)
main.add_command(dev_cluster)
