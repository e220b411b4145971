"""The local transport's early agent start, with real processes and pipes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_for

from batchpool.config import PoolConfig
from batchpool.pool.local import settle_early_agent
from batchpool.pool.local import start_agent_early as start_local_pool_agent_early
from batchpool.transport import local
from batchpool.transport.local import LocalConnection, start_agent_early, stop_early_agents

# Prints when it started (ns since the epoch), then echoes its input: the payload first.
STAMPED_CAT = "date +%s%N; exec cat"


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


def test_an_early_agent_never_taken_over_is_stopped_at_exit(tmp_path: Path) -> None:
    # Its stdin is closed (and it is waited for) by an exit handler, before the handlers
    # registered earlier run: the log shows the agent's end first. (Without the handler
    # the agent would still end, but only once the process had exited.)
    log = tmp_path / "order"
    script = ("import atexit\n"
              f"atexit.register(lambda: open({str(log)!r}, 'a').write('parent exits\\n'))\n"
              "from batchpool.transport.local import start_agent_early\n"
              f"start_agent_early('cat > /dev/null; echo agent stopped >> {log}', b'x')\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2, 5, "both lines")
    assert log.read_text().splitlines() == ["agent stopped", "parent exits"]


def test_settle_keeps_the_early_agent_only_for_a_local_pool_with_its_python(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHPOOL_HOME", str(tmp_path))
    pools = {"same": PoolConfig(name="local", provider="local"),
             "other python": PoolConfig(name="local", provider="local",
                                        python="/usr/bin/python3"),
             "ssh": PoolConfig(name="lab", provider="static", hosts=("node1",))}
    kept = {}
    try:
        for name, pool in pools.items():
            start_local_pool_agent_early()
            (early,) = local._early.values()
            settle_early_agent(pool)
            kept[name] = bool(local._early)
            assert kept[name] == (early.poll() is None)
            stop_early_agents()
            assert early.returncode is not None
    finally:
        stop_early_agents()
    assert kept == {"same": True, "other python": False, "ssh": False}


def test_an_early_agent_that_died_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    # The command ends by itself the first time (no flag file yet; the sleep keeps its
    # stdin open for the early write) and echoes its input the second time: only a
    # freshly started process can answer.
    flag = tmp_path / "flag"
    command = f"test -e {flag} && exec cat; sleep 0.2"

    async def scenario() -> bytes:
        start_agent_early(command, b"hello\n")
        (early,) = local._early.values()
        await asyncio.to_thread(early.wait, 10)
        flag.touch()
        connection = LocalConnection()
        stream = await connection.start_agent(command, b"hello\n")
        line = await stream.readline()
        await connection.close()
        return line

    try:
        assert asyncio.run(scenario()) == b"hello\n"
        assert not local._early
    finally:
        stop_early_agents()
