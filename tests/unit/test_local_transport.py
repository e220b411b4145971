"""The local transport's early agent start, with real processes and pipes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import wait_for

from batchpool.transport import local
from batchpool.transport.local import LocalConnection, start_agent_early, stop_early_agents

# Prints when it started (ns since the epoch), then echoes its input: the payload first.
STAMPED_CAT = "date +%s%N; exec cat"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_an_agent_started_early_is_taken_over_with_its_payload() -> None:
    async def scenario() -> tuple[int, float, list[bytes]]:
        start_agent_early(STAMPED_CAT, b"payload\n")
        await asyncio.sleep(0.3)
        asked = time.time()
        connection = LocalConnection()
        stream = await connection.start_agent(STAMPED_CAT, b"payload\n")
        lines = [await stream.readline(), await stream.readline()]
        stream.write(b"later\n")
        await stream.drain()
        lines.append(await stream.readline())
        await connection.close()
        return int(lines[0]), asked, lines[1:]

    started_ns, asked, echoed = asyncio.run(scenario())
    assert started_ns / 1e9 < asked - 0.2, "a new process was started, not the early one"
    assert echoed == [b"payload\n", b"later\n"]  # the payload went out once
    assert not local._early


def test_an_early_agent_for_another_command_is_not_used_and_is_stopped() -> None:
    async def scenario() -> bytes:
        start_agent_early(STAMPED_CAT, b"early\n")
        connection = LocalConnection()
        stream = await connection.start_agent("exec cat", b"fresh\n")
        line = await stream.readline()
        await connection.close()
        return line

    early = None
    try:
        line = asyncio.run(scenario())
        assert line == b"fresh\n"
        (early,) = local._early.values()
        assert early.poll() is None
    finally:
        stop_early_agents()
    assert early is not None and early.returncode is not None and not local._early


def test_an_early_agent_never_taken_over_ends_with_its_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = ("from batchpool.transport.local import start_agent_early\n"
              f"start_agent_early('echo $$ > {pid_file}; exec cat', b'')\n"
              "import time; time.sleep(0.5)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 5, "its pid")
    pid = int(pid_file.read_text())
    assert not _alive(pid), f"the early agent {pid} outlived the process that started it"
