"""The node agent, run for real: started exactly as the controller starts it.

Every test talks to a real agent process through the bootstrap command and real
pipes, and the tasks are real ``/bin/sh`` processes. The `agents` fixture closes (and
if need be kills) every agent it started, and every process a test recorded.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from agent_harness import StartAgent, alive, read_pid, wait_until

from batchpool.agent import agent as agent_module
from batchpool.agent.launch import (
    AGENT_NAME,
    agent_source,
    bootstrap_command,
    bootstrap_payload,
    decode,
    encode,
)
from batchpool.errors import ProtocolError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the agent is POSIX-only")

DONE_FIELDS = {"op", "key", "exit", "signal", "timed_out", "cancelled", "cpu", "wall",
               "outputs", "error"}


# ------------------------------------------------------------------ launch helpers


def test_encode_decode_round_trip() -> None:
    msg = {"op": "run", "key": "j/1", "env": {"A": "é\n"}, "timeout": None, "t": [1, 2.5]}
    line = encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b" " not in line
    assert decode(line) == msg


@pytest.mark.parametrize("line", [b"", b"not json\n", b"[1, 2]\n", b'{"no":"op"}\n',
                                  b'{"op": 3}\n', b"\xff\xfe\n"])
def test_decode_rejects_garbage(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(line)


def test_agent_source_and_payload() -> None:
    src = Path(agent_module.__file__).read_bytes()
    assert agent_source() == src
    from batchpool.agent import launch

    assert src == launch.AGENT_SOURCE
    payload = bootstrap_payload()
    head, _, rest = payload.partition(b"\n")
    assert int(head) == len(src) and rest == src


def test_bootstrap_command_quotes_its_words() -> None:
    cmd = bootstrap_command("/opt/my python/bin/python3", "/tmp/a b/it's", 1.5, ("-I",))
    words = shlex.split(cmd)
    assert words[0] == "/opt/my python/bin/python3"
    assert words[1:4] == ["-I", "-u", "-c"]
    assert AGENT_NAME in words[4]
    assert words[5:] == ["/tmp/a b/it's", "1.5"]


def test_pools_start_the_agent_without_site(tmp_path: Path) -> None:
    """The command the pools use skips `site` (-S), and the agent comes up under it."""
    from batchpool.pool.session import NodeSettings, agent_command

    settings = NodeSettings(python=sys.executable, workdir=str(tmp_path), slots=None,
                            start_task=None, heartbeat=0.0, local_results=None)
    cmd = agent_command(settings)
    assert shlex.split(cmd)[1:3] == ["-S", "-u"]
    with subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(bootstrap_payload())
        proc.stdin.flush()
        hello = decode(proc.stdout.readline())
        proc.stdin.close()
        assert proc.wait(timeout=10) == 0
    assert hello["op"] == "hello" and hello["workdir"] == str(tmp_path)


# ------------------------------------------------------------------------- agent


def test_hello_fields(agents: StartAgent, tmp_path: Path) -> None:
    agent = agents(hello=False)
    hello = agent.expect("hello")
    assert hello["version"] == 1
    assert isinstance(hello["pid"], int) and alive(hello["pid"])
    assert isinstance(hello["host"], str) and hello["host"]
    assert isinstance(hello["cores"], int) and hello["cores"] >= 1
    assert hello["python"] == ".".join(map(str, sys.version_info[:3]))
    assert hello["workdir"] == str(tmp_path / "w")
    assert (tmp_path / "w").is_dir()
    agent.agent_pid = hello["pid"]


def test_exit_code_and_output_files(agents: StartAgent) -> None:
    agent = agents()
    agent.run("a", "echo hi; echo err >&2; exit 3")
    done = agent.expect("done", "a")
    assert set(done) == DONE_FIELDS
    assert done["exit"] == 3 and done["signal"] is None
    assert not done["timed_out"] and not done["cancelled"]
    assert done["error"] is None and done["outputs"] == {}
    assert done["wall"] >= 0 and done["cpu"] >= 0
    assert (agent.task_dir("a") / "stdout").read_text() == "hi\n"
    assert (agent.task_dir("a") / "stderr").read_text() == "err\n"


def test_task_runs_in_its_dir_with_dev_null_stdin(agents: StartAgent, tmp_path: Path) -> None:
    agent = agents()
    absolute = tmp_path / "elsewhere" / "deep"
    agent.run("rel", "pwd; cat; echo eof", "some/nested/dir")
    agent.run("abs", "pwd", str(absolute))
    assert agent.expect("done", "rel")["exit"] == 0
    assert agent.expect("done", "abs")["exit"] == 0
    rel = tmp_path / "w" / "some" / "nested" / "dir"
    assert (rel / "stdout").read_text() == f"{rel}\neof\n"
    assert (absolute / "stdout").read_text() == f"{absolute}\n"


def test_env_reaches_task(agents: StartAgent) -> None:
    agent = agents()
    agent.run("e", 'echo "$BP_ONE|$BP_TWO|${HOME:+home-kept}"',
              env={"BP_ONE": "1", "BP_TWO": "two words"})
    assert agent.expect("done", "e")["exit"] == 0
    assert (agent.task_dir("e") / "stdout").read_text() == "1|two words|home-kept\n"


def test_links_are_visible_to_the_task(agents: StartAgent, tmp_path: Path) -> None:
    agent = agents()
    (tmp_path / "w" / "data").mkdir(parents=True)
    (tmp_path / "w" / "data" / "input.txt").write_text("relative target\n")
    absolute = tmp_path / "shard3.json"
    absolute.write_text('{"shard": 3}\n')
    links = [["input.txt", "data/input.txt"], ["inputs/map[3]/part.json", str(absolute)]]
    agent.run("l", "cat input.txt 'inputs/map[3]/part.json'", links=links)
    done = agent.expect("done", "l")
    assert done["exit"] == 0, (agent.task_dir("l") / "stderr").read_text()
    assert (agent.task_dir("l") / "stdout").read_text() == 'relative target\n{"shard": 3}\n'
    link = agent.task_dir("l") / "inputs" / "map[3]" / "part.json"
    assert link.is_symlink() and os.readlink(link) == str(absolute)
    assert os.readlink(agent.task_dir("l") / "input.txt") == str(tmp_path / "w/data/input.txt")


def test_links_are_replaced_on_rerun_in_the_same_dir(agents: StartAgent, tmp_path: Path) -> None:
    agent = agents()
    for n in (1, 2):
        (tmp_path / f"v{n}").write_text(f"v{n}\n")
        agent.run(f"r{n}", "cat in", "same", links=[["in", str(tmp_path / f"v{n}")]])
        assert agent.expect("done", f"r{n}")["exit"] == 0
        assert (tmp_path / "w" / "same" / "stdout").read_text() == f"v{n}\n"


def test_outputs_globs(agents: StartAgent, tmp_path: Path) -> None:
    agent = agents()
    (tmp_path / "in.json").write_text("{}")
    script = ("mkdir -p sub/deep && echo 1 > a.json && echo 2 > sub/b.json && "
              "echo 3 > sub/deep/c.json && echo x > sub/x.txt")
    patterns = ["**/*.json", "sub/*.txt", "*.csv", "sub/**"]
    agent.run("o", script, links=[["inputs/in.json", str(tmp_path / "in.json")]],
              outputs=patterns)
    done = agent.expect("done", "o")
    assert done["exit"] == 0
    assert done["outputs"] == {
        "**/*.json": ["a.json", "sub/b.json", "sub/deep/c.json"],  # the input link is not
        "sub/*.txt": ["sub/x.txt"],
        "*.csv": [],
        "sub/**": ["sub", "sub/b.json", "sub/deep", "sub/deep/c.json", "sub/x.txt"],
    }
    agent.run("failed", "echo 1 > a.json; exit 1", outputs=["*.json"])
    assert agent.expect("done", "failed")["outputs"] == {}


def test_task_killed_by_signal(agents: StartAgent) -> None:
    agent = agents()
    agent.run("k9", "kill -9 $$")
    done = agent.expect("done", "k9")
    assert done["exit"] is None and done["signal"] == 9
    assert not done["timed_out"] and not done["cancelled"]


def test_background_children_are_killed_when_the_shell_exits(agents: StartAgent) -> None:
    agent = agents()
    agent.run("bg", "sleep 300 & echo $! > bg.pid")
    assert agent.expect("done", "bg")["exit"] == 0
    bg = read_pid(agent.task_dir("bg") / "bg.pid")
    agent.pids.append(bg)
    assert wait_until(lambda: not alive(bg), 2.0)


def test_timeout_kills_the_whole_group(agents: StartAgent) -> None:
    agent = agents()
    started = time.monotonic()
    agent.run("t", "sleep 300 & echo $! > bg.pid; sleep 30", timeout=0.5)
    bg = read_pid(agent.task_dir("t") / "bg.pid")
    agent.pids.append(bg)
    done = agent.expect("done", "t", timeout=5)
    elapsed = time.monotonic() - started
    assert done["timed_out"] is True and done["cancelled"] is False
    assert done["exit"] is None and done["signal"] == signal.SIGTERM
    assert 0.4 < done["wall"] < 3.0 and elapsed < 3.0
    assert wait_until(lambda: not alive(bg), 1.0)


def test_timeout_escalates_to_sigkill_after_grace(agents: StartAgent) -> None:
    agent = agents()
    agent.run("stubborn", "trap '' TERM; echo $$ > sh.pid; while :; do sleep 0.05; done",
              timeout=0.3)
    agent.pids.append(read_pid(agent.task_dir("stubborn") / "sh.pid"))
    done = agent.expect("done", "stubborn", timeout=3 + agent_module.GRACE)
    assert done["timed_out"] is True and done["signal"] == signal.SIGKILL
    assert done["wall"] >= 0.3 + agent_module.GRACE - 0.1


def test_kill_op_cancels(agents: StartAgent) -> None:
    agent = agents()
    agent.run("c", "echo $$ > sh.pid; sleep 30")
    sh = read_pid(agent.task_dir("c") / "sh.pid")
    agent.pids.append(sh)
    agent.send({"op": "kill", "key": "c"})
    done = agent.expect("done", "c", timeout=5)
    assert done["cancelled"] is True and done["timed_out"] is False
    assert done["signal"] == signal.SIGTERM and done["wall"] < 3
    assert not alive(sh)


def test_kill_of_unknown_key_is_ignored(agents: StartAgent) -> None:
    agent = agents()
    agent.send({"op": "kill", "key": "nobody"})
    agent.send({"op": "ping", "t": 7})
    assert agent.expect("pong")["t"] == 7
    assert not [m for m in agent.seen if m["op"] == "error"]


def test_many_noop_tasks(agents: StartAgent) -> None:
    agent = agents(heartbeat=1.0)
    n = 500
    batch = b"".join(encode({"op": "run", "key": f"n{i}", "cmd": "true", "dir": f"n/{i}",
                             "env": {}, "timeout": None, "links": [], "outputs": []})
                     for i in range(n))
    started = time.perf_counter()
    writer = threading.Thread(target=agent.write, args=(batch,), daemon=True)
    writer.start()
    keys: set[str] = set()
    while len(keys) < n:
        done = agent.expect("done", timeout=30)
        assert done["exit"] == 0, done
        keys.add(done["key"])
    elapsed = time.perf_counter() - started
    writer.join(5)
    assert keys == {f"n{i}" for i in range(n)}
    rate = n / elapsed
    print(f"\nagent: {n} no-op tasks in {elapsed:.2f}s = {rate:.0f} tasks/s")
    assert rate > 100  # a sanity floor; the benchmark suite holds the real target


def test_heartbeats(agents: StartAgent) -> None:
    agent = agents(heartbeat=0.2)
    agent.run("hb", "sleep 2")
    beats = [agent.expect("hb", timeout=2) for _ in range(3)]
    for beat in beats:
        assert set(beat) == {"op", "t", "running", "load"}
        assert abs(beat["t"] - time.time()) < 60
        assert isinstance(beat["load"], float)
    assert beats[-1]["running"] == 1
    assert beats[-1]["t"] - beats[0]["t"] < 1.5


def test_end_of_input_kills_tasks_and_exits(agents: StartAgent) -> None:
    agent = agents()
    agent.run("eof", "sleep 300 & echo $! > bg.pid; echo $$ > sh.pid; wait")
    bg = read_pid(agent.task_dir("eof") / "bg.pid")
    sh = read_pid(agent.task_dir("eof") / "sh.pid")
    agent.pids += [bg, sh]
    started = time.monotonic()
    agent.close_input()
    assert agent.proc.wait(timeout=2) == 0
    assert time.monotonic() - started < 2
    agent_pid = agent.agent_pid
    assert agent_pid is not None and wait_until(lambda: not alive(agent_pid), 1)
    assert wait_until(lambda: not alive(bg) and not alive(sh), 1.0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_agent_kills_tasks(agents: StartAgent, sig: int) -> None:
    agent = agents()
    agent.run("s", "echo $$ > sh.pid; sleep 300")
    sh = read_pid(agent.task_dir("s") / "sh.pid")
    agent.pids.append(sh)
    assert agent.agent_pid is not None
    os.kill(agent.agent_pid, sig)
    assert wait_until(lambda: agent.agent_pid is not None and not alive(agent.agent_pid), 2)
    assert wait_until(lambda: not alive(sh), 1.0)


@pytest.mark.parametrize("how", ["sigterm", "eof"])
def test_stopping_during_a_burst_of_spawns_leaves_no_task_behind(
        agents: StartAgent, tmp_path: Path, how: str) -> None:
    agent = agents(heartbeat=0)
    pids = tmp_path / "pids"
    pids.touch()
    cmd = f"echo $$ >> {shlex.quote(str(pids))}; exec sleep 300"
    batch = b"".join(encode({"op": "run", "key": f"b{i}", "cmd": cmd, "dir": f"b/{i}"})
                     for i in range(400))

    def feed() -> None:
        with contextlib.suppress(OSError):  # the agent may be gone before it read it all
            agent.write(batch)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    assert wait_until(lambda: len(pids.read_text().split()) >= 50, 10)
    assert agent.agent_pid is not None
    if how == "sigterm":
        os.kill(agent.agent_pid, signal.SIGTERM)
    else:
        agent.close_input()
    assert agent.proc.wait(timeout=3) == 0
    time.sleep(0.5)  # a shell that escaped would have written its pid by now
    started = [int(p) for p in pids.read_text().split()]
    agent.pids += started
    assert started
    assert wait_until(lambda: not any(alive(p) for p in started), 2.0), \
        [p for p in started if alive(p)]


def test_exit_op_kills_tasks_and_exits_zero(agents: StartAgent) -> None:
    agent = agents()
    agent.run("x", "echo $$ > sh.pid; sleep 300")
    sh = read_pid(agent.task_dir("x") / "sh.pid")
    agent.pids.append(sh)
    agent.send({"op": "exit"})
    assert agent.proc.wait(timeout=2) == 0
    assert wait_until(lambda: not alive(sh), 1.0)


def test_garbage_reports_error_and_agent_keeps_working(agents: StartAgent) -> None:
    agent = agents()
    for line in (b"this is not json\n", b"[1, 2, 3]\n", b'{"op": "frobnicate"}\n',
                 b'{"op": "run", "cmd": "true"}\n', b'{"op": "kill"}\n'):
        agent.write(line)
        assert isinstance(agent.expect("error")["error"], str)
    agent.write(b"\n")  # blank lines are ignored
    agent.run("after", "echo ok")
    assert agent.expect("done", "after")["exit"] == 0


def test_ping_pong(agents: StartAgent) -> None:
    agent = agents()
    for t in (1, "x", {"nested": [1.5, None]}):
        agent.send({"op": "ping", "t": t})
        assert agent.expect("pong") == {"op": "pong", "t": t}


def test_attempt_that_cannot_start_reports_done_with_error(agents: StartAgent,
                                                           tmp_path: Path) -> None:
    agent = agents()
    (tmp_path / "w" / "a-file").write_text("")
    agent.run("badir", "true", "a-file/sub")
    agent.run("escape", "true", links=[["../outside", "x"]])
    agent.run("badenv", "true", env={"A": 1})
    agent.run("badglob", "true", outputs=["../*"])
    for key in ("badir", "escape", "badenv", "badglob"):
        done = agent.expect("done", key)
        assert done["exit"] is None and done["signal"] is None, done
        assert isinstance(done["error"], str) and done["error"], done
    assert not (tmp_path / "outside").exists()


def test_duplicate_running_key_is_refused(agents: StartAgent) -> None:
    agent = agents()
    agent.run("dup", "sleep 0.5; echo first")
    agent.run("dup", "echo second")
    assert agent.expect("error")["key"] == "dup"
    assert agent.expect("done", "dup")["exit"] == 0
    assert (agent.task_dir("dup") / "stdout").read_text() == "first\n"


def test_fatal_when_workdir_cannot_be_made(agents: StartAgent, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    agent = agents(workdir=tmp_path / "file" / "w", hello=False)
    fatal = agent.expect("fatal")
    assert "file" in fatal["error"]
    assert agent.proc.wait(timeout=5) == 1


def _isolated_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def test_runs_under_isolated_plain_python(agents: StartAgent, tmp_path: Path) -> None:
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    agent = agents(python=python, python_args=("-I", "-S"), cwd=cwd, env=_isolated_env())
    agent.run("iso", "echo isolated", outputs=["std*"])
    done = agent.expect("done", "iso")
    assert done["exit"] == 0 and done["outputs"] == {"std*": ["stderr", "stdout"]}
    assert (agent.task_dir("iso") / "stdout").read_text() == "isolated\n"


@functools.cache
def _oldest_python() -> str | None:
    """A working python3.8 (the oldest the agent supports), if this machine has one."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [*sorted(glob.glob(os.path.join(root, "versions", "3.8*", "bin", "python3"))),
                  shutil.which("python3.8"), "/usr/bin/python3.8"]
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            code = "import sys; print(sys.version_info[:2])"
            probe = subprocess.run([candidate, "-I", "-S", "-c", code],
                                   capture_output=True, text=True, timeout=30)
            if probe.returncode == 0 and probe.stdout.strip() == "(3, 8)":
                return candidate
    return None


@pytest.mark.skipif(_oldest_python() is None, reason="no working python3.8 on this machine")
def test_runs_under_python_3_8(agents: StartAgent, tmp_path: Path) -> None:
    python = _oldest_python()
    assert python is not None
    agent = agents(python=python, python_args=("-I", "-S"), cwd=tmp_path, env=_isolated_env())
    hello = agent.seen[-1]
    assert hello["python"].startswith("3.8.")
    agent.run("old", "echo $X; sleep 0.1", env={"X": "y"}, timeout=5, outputs=["*"])
    done = agent.expect("done", "old")
    assert done["exit"] == 0 and done["outputs"]["*"] == ["stderr", "stdout"]
    agent.run("old-t", "sleep 30", timeout=0.3)
    assert agent.expect("done", "old-t", timeout=5)["timed_out"] is True
    agent.send({"op": "ping", "t": 1})
    assert agent.expect("pong")["t"] == 1
    assert agent.expect("hb", timeout=2)["running"] == 0


def test_slots_limit_running_tasks_and_queue_the_rest_in_order(agents: StartAgent,
                                                                tmp_path: Path) -> None:
    agent = agents()
    log = tmp_path / "order.log"
    agent.send({"op": "slots", "n": 2})
    for i in range(6):  # staggered lengths: no two tasks start at the same moment
        nap = f"{0.2 * (i + 1):.1f}"
        agent.run(f"q{i}", f"echo start {i} >> {log}; sleep {nap}; echo end {i} >> {log}")
    for i in range(6):
        assert agent.expect("done", f"q{i}", timeout=10)["exit"] == 0
    running, most = 0, 0
    starts = []
    for line in log.read_text().split("\n"):
        if line.startswith("start"):
            running += 1
            starts.append(int(line.split()[1]))
        elif line.startswith("end"):
            running -= 1
        most = max(most, running)
    assert most == 2
    # the first two start together (their shells may print in either order); the queued
    # ones start in the order they were sent
    assert sorted(starts[:2]) == [0, 1] and starts[2:] == [2, 3, 4, 5]


def test_kill_of_a_queued_task_reports_it_cancelled_without_running(agents: StartAgent,
                                                                     tmp_path: Path) -> None:
    agent = agents()
    agent.send({"op": "slots", "n": 1})
    agent.run("busy", "echo $$ > sh.pid; sleep 30")
    agent.pids.append(read_pid(agent.task_dir("busy") / "sh.pid"))
    agent.run("later", f"touch {tmp_path / 'ran'}")
    agent.send({"op": "kill", "key": "later"})
    done = agent.expect("done", "later", timeout=5)
    assert done["cancelled"] is True and done["exit"] is None
    agent.send({"op": "kill", "key": "busy"})
    agent.expect("done", "busy", timeout=5)
    time.sleep(0.3)
    assert not (tmp_path / "ran").exists()


def test_bad_slots_message_is_an_error(agents: StartAgent) -> None:
    agent = agents()
    agent.send({"op": "slots", "n": -1})
    assert "slots" in agent.expect("error")["error"]


def test_small_logs_and_outputs_come_back_inline(agents: StartAgent) -> None:
    agent = agents()
    agent.run("a", "echo hi; echo oops >&2; printf x > small.txt; head -c 5000 /dev/zero > big.bin",
              outputs=["*.txt", "*.bin"], inline=1000)
    done = agent.expect("done", "a")
    files = {name: base64.b64decode(data) for name, data in done["files"].items()}
    assert files == {"stdout": b"hi\n", "stderr": b"oops\n", "small.txt": b"x"}
    agent.run("b", "true")  # inline not asked for (a node sharing the results dir)
    assert "files" not in agent.expect("done", "b")


def test_attempt_directories_left_empty_are_reused(agents: StartAgent, tmp_path: Path) -> None:
    agent = agents()
    work, spares = tmp_path / "w", tmp_path / "w" / ".spare"
    agent.run("a", "true", "1/t@0/1")
    assert agent.expect("done", "a")["exit"] == 0
    assert not (work / "1" / "t@0").exists()  # it left nothing: kept as a spare
    (spare,) = spares.iterdir()
    inode = spare.stat().st_ino
    agent.run("b", "echo $(ls -A) in $(pwd)", "1/t@1/1")
    assert agent.expect("done", "b")["exit"] == 0
    assert list(spares.iterdir()) == []
    task_dir = work / "1" / "t@1"
    assert task_dir.stat().st_ino == inode  # the spare, renamed into place
    assert (task_dir / "1" / "stdout").read_text() == f"stderr stdout in {task_dir / '1'}\n"
    # directories that hold something are left where they are
    agent.run("c", "touch scratch", "1/t@2/1")
    agent.run("d", "echo out > part.txt", "1/t@3/1", outputs=["*.txt"])
    agent.run("e", "true", str(tmp_path / "elsewhere" / "t" / "1"))
    (work / "1" / "t@4" / "1").mkdir(parents=True)
    agent.run("f", "exit 1", "1/t@4/2")  # a retry: its task directory holds attempt 1
    for key in "cdef":
        agent.expect("done", key)
    assert (work / "1" / "t@2" / "1" / "scratch").exists()
    assert (work / "1" / "t@3" / "1" / "part.txt").exists()
    assert (tmp_path / "elsewhere" / "t" / "1" / "stdout").exists()
    assert (work / "1" / "t@4" / "2" / "stdout").exists()


def test_a_spare_written_to_after_it_was_kept_is_not_reused(agents: StartAgent,
                                                            tmp_path: Path) -> None:
    agent = agents()
    agent.run("a", "true", "1/t@0/1")
    agent.expect("done", "a")
    (spare,) = (tmp_path / "w" / ".spare").iterdir()
    (spare / "1" / "stdout").write_text("late output of an escaped process\n")
    agent.run("b", "echo mine", "1/t@1/1")
    agent.expect("done", "b")
    assert (tmp_path / "w" / "1" / "t@1").stat().st_ino != spare.stat().st_ino
    assert (tmp_path / "w" / "1" / "t@1" / "1" / "stdout").read_text() == "mine\n"


def test_done_lines_wait_while_work_is_queued_but_at_most_hold(agents: StartAgent) -> None:
    agent = agents()
    agent.send({"op": "slots", "n": 1})
    sent = time.monotonic()
    agent.write(b"".join(encode({"op": "run", "key": key, "cmd": cmd, "dir": f"q/{key}"})
                         for key, cmd in [("a", "sleep 0.1"), ("b", "sleep 1"), ("c", "true"),
                                          ("d", "true")]))
    first = agent.expect("done", "a", timeout=5)
    arrived = time.monotonic() - sent
    # when `a` ended, two tasks still waited behind `b`: its line was held, for HOLD
    assert first["wall"] + agent_module.HOLD <= arrived < 0.6, (first["wall"], arrived)
    for key in "bcd":
        assert agent.expect("done", key, timeout=5)["exit"] == 0
