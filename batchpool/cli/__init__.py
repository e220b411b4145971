"""The `batchpool` command: thin click commands over the library."""

from __future__ import annotations

import importlib
import logging

import click

from batchpool import __version__

#: Each subcommand and where it lives. A module is imported only when its command runs
#: (or `--help` lists it), so `batchpool run` does not load the job, pool or dev-cluster
#: commands: start-up time is part of every run.
COMMANDS = {
    "run": ("batchpool.cli.run", "run"),
    "submit": ("batchpool.cli.submit", "submit"),
    "job": ("batchpool.cli.job", "job"),
    "pool": ("batchpool.cli.pool", "pool"),
    "node": ("batchpool.cli.pool", "node"),
    "dev-cluster": ("batchpool.cli.devcluster", "dev_cluster"),
    "controller": ("batchpool.cli.controller", "controller"),
    "schedule": ("batchpool.cli.schedule", "schedule"),
}


class _LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (see COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), name)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
