"""The command group loads each subcommand's module only when that command is used."""

from __future__ import annotations

import ast
import gc
import subprocess
import sys

import pytest
from click.testing import CliRunner

from batchpool.cli import COMMANDS, main
from batchpool.cli.common import exit_quickly, gc_paused


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.strip()]
    assert listed == list(COMMANDS)


def test_run_does_not_import_the_other_commands() -> None:
    code = ("import sys\nfrom batchpool.cli import main\n"
            "main.get_command(None, 'run')\n"
            "print(sorted(m for m in sys.modules if m.startswith('batchpool.cli.')"
            " or m == 'batchpool.devcluster'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert ast.literal_eval(out) == ["batchpool.cli.common", "batchpool.cli.run"]


def test_unknown_command_is_refused() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code == 2 and "No such command 'frobnicate'" in result.output


def test_gc_paused_restores_the_collector_even_on_error() -> None:
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), gc_paused():
        assert not gc.isenabled()
        1 / 0  # noqa: B018
    assert gc.isenabled()


def test_exit_quickly_exits_with_the_status_and_freezes_what_is_left() -> None:
    try:
        with pytest.raises(SystemExit) as exited:
            exit_quickly(3)
        assert exited.value.code == 3
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
