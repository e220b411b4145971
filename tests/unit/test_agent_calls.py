"""Python calls in the agent's warm workers, run for real through a real agent process."""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from agent_harness import AgentProc, StartAgent, alive, wait_until

from batchpool.agent.agent import batchable
from batchpool.agent.launch import encode, worker_source

MODULE = '''
import os, sys, time
CALLS = 0

def count(n, scale=1):
    global CALLS
    CALLS += 1
    print("counting", n)
    print("to stderr", file=sys.stderr)
    return {"n": n * scale, "calls": CALLS, "pid": os.getpid(), "cwd": os.getcwd(),
            "env": os.environ.get("MY_VAR")}

def boom():
    raise ZeroDivisionError("no luck")

def leave():
    sys.exit(3)

def nap(seconds):
    time.sleep(seconds)
    return seconds

def not_json():
    return {1, 2}
'''


@pytest.fixture
def agent(agents: StartAgent, tmp_path: Path) -> AgentProc:
    started = agents()
    started.send({"op": "worker", "source": worker_source()})
    (tmp_path / "mod.py").write_text(MODULE)
    return started


def call(agent: AgentProc, key: str, target: str, tmp_path: Path, *args: Any,
         timeout: float | None = None, env: dict[str, str] | None = None,
         **kwargs: Any) -> dict[str, Any]:
    agent.send({"op": "run", "key": key, "cmd": None, "dir": f"tasks/{key}",
                "env": env or {}, "timeout": timeout, "outputs": [],
                "links": [["mod.py", str(tmp_path / "mod.py")]],
                "call": {"target": target, "args": list(args), "kwargs": kwargs}})
    return agent.expect("done", key, timeout=30)


def test_call_returns_json_result_and_captures_output(agent: AgentProc, tmp_path: Path) -> None:
    done = call(agent, "a", "mod:count", tmp_path, 21, scale=2, env={"MY_VAR": "x y"})
    assert done["exit"] == 0 and done["error"] is None, done
    result = json.loads(done["result"])
    assert result["n"] == 42 and result["env"] == "x y"
    task_dir = agent.task_dir("a")
    assert Path(result["cwd"]) == task_dir
    assert json.loads((task_dir / "result.json").read_text()) == result
    assert done["outputs"] == {"result.json": ["result.json"]}
    assert (task_dir / "stdout").read_text() == "counting 21\n"
    assert (task_dir / "stderr").read_text() == "to stderr\n"
    assert "MY_VAR" not in os.environ


def test_worker_stays_warm_between_calls(agent: AgentProc, tmp_path: Path) -> None:
    first = json.loads(call(agent, "a", "mod:count", tmp_path, 1)["result"])
    second = json.loads(call(agent, "b", "mod:count", tmp_path, 2)["result"])
    assert second["pid"] == first["pid"], "the second call must reuse the warm worker"
    assert second["calls"] == 2, "the module must stay imported between calls"
    assert (agent.task_dir("b") / "stdout").read_text() == "counting 2\n"


def test_changed_module_is_imported_afresh(agent: AgentProc, tmp_path: Path) -> None:
    call(agent, "a", "mod:count", tmp_path, 1)
    other = tmp_path / "v2"
    other.mkdir()
    (other / "mod.py").write_text("def count(n):\n    return 'v2'\n")
    agent.send({"op": "run", "key": "b", "cmd": None, "dir": "tasks/b", "env": {},
                "timeout": None, "outputs": [], "links": [["mod.py", str(other / "mod.py")]],
                "call": {"target": "mod:count", "args": [1], "kwargs": {}}})
    assert json.loads(agent.expect("done", "b")["result"]) == "v2"


@pytest.mark.parametrize(("target", "error"), [
    ("mod:boom", "ZeroDivisionError: no luck"),
    ("mod:leave", "SystemExit: 3"),
    ("mod:missing", "AttributeError"),
    ("nosuchmodule:f", "ModuleNotFoundError"),
    ("mod:not_json", "TypeError"),
])
def test_failing_call_fails_the_task_with_its_traceback(agent: AgentProc, tmp_path: Path,
                                                         target: str, error: str) -> None:
    done = call(agent, "a", target, tmp_path)
    assert done["exit"] == 1 and error in done["error"], done
    assert "Traceback" in done["traceback"]
    assert "Traceback" in (agent.task_dir("a") / "stderr").read_text()
    # the worker survived: the next call works
    assert call(agent, "b", "mod:count", tmp_path, 1)["exit"] == 0


def test_timeout_kills_the_worker_and_a_fresh_one_takes_the_next_call(
        agent: AgentProc, tmp_path: Path) -> None:
    pid = json.loads(call(agent, "a", "mod:count", tmp_path, 1)["result"])["pid"]
    done = call(agent, "b", "mod:nap", tmp_path, 60, timeout=0.5)
    assert done["timed_out"] and done["exit"] is None and done["signal"] == signal.SIGTERM
    assert wait_until(lambda: not alive(pid), 5)
    after = json.loads(call(agent, "c", "mod:count", tmp_path, 1)["result"])
    assert after["pid"] != pid and after["calls"] == 1


def test_a_worker_that_exits_reports_its_exit_status(agent: AgentProc, tmp_path: Path) -> None:
    (tmp_path / "quit.py").write_text("import os\ndef now():\n    os._exit(7)\n")
    agent.send({"op": "run", "key": "q", "cmd": None, "dir": "tasks/q", "env": {},
                "timeout": None, "outputs": [], "links": [["quit.py", str(tmp_path / "quit.py")]],
                "call": {"target": "quit:now", "args": [], "kwargs": {}}})
    done = agent.expect("done", "q")
    assert done["exit"] == 7 and done["signal"] is None and "worker died" in done["error"]


def test_a_crashing_worker_takes_what_it_started_with_it(agent: AgentProc,
                                                        tmp_path: Path) -> None:
    (tmp_path / "bg.py").write_text(
        "import os, subprocess\n"
        "def crash():\n"
        "    p = subprocess.Popen(['sleep', '60'])\n"
        "    open('sleep.pid', 'w').write(str(p.pid))\n"
        "    os._exit(3)\n")
    agent.send({"op": "run", "key": "c", "cmd": None, "dir": "tasks/c", "env": {},
                "timeout": None, "outputs": [], "links": [["bg.py", str(tmp_path / "bg.py")]],
                "call": {"target": "bg:crash", "args": [], "kwargs": {}}})
    assert agent.expect("done", "c")["exit"] == 3
    pid = int((agent.task_dir("c") / "sleep.pid").read_text())
    agent.pids.append(pid)
    assert wait_until(lambda: not alive(pid), 5), "the call's child outlived its worker"


def test_kill_cancels_a_running_call(agent: AgentProc, tmp_path: Path) -> None:
    agent.send({"op": "run", "key": "a", "cmd": None, "dir": "tasks/a", "env": {},
                "timeout": None, "outputs": [], "links": [["mod.py", str(tmp_path / "mod.py")]],
                "call": {"target": "mod:nap", "args": [60], "kwargs": {}}})
    assert wait_until(lambda: (agent.task_dir("a") / "stdout").exists(), 10)
    agent.send({"op": "kill", "key": "a"})
    done = agent.expect("done", "a", timeout=10)
    assert done["cancelled"] and done["exit"] is None


def test_calls_run_in_parallel_workers(agent: AgentProc, tmp_path: Path) -> None:
    for key in ("a", "b"):
        agent.send({"op": "run", "key": key, "cmd": None, "dir": f"tasks/{key}", "env": {},
                    "timeout": None, "outputs": [],
                    "links": [["mod.py", str(tmp_path / "mod.py")]],
                    "call": {"target": "mod:count", "args": [1], "kwargs": {}}})
    pids = {json.loads(agent.expect("done", key)["result"])["pid"] for key in ("a", "b")}
    assert len(pids) in (1, 2)  # two workers if the calls overlapped, else one reused


def test_pickled_call_round_trip(agent: AgentProc, tmp_path: Path) -> None:
    payload = base64.b64encode(pickle.dumps((divmod, (17, 5), {}))).decode()
    agent.send({"op": "run", "key": "p", "cmd": None, "dir": "tasks/p", "env": {},
                "timeout": None, "outputs": [], "links": [], "call": {"pickle": payload}})
    done = agent.expect("done", "p")
    assert done["exit"] == 0
    assert pickle.loads(base64.b64decode(done["pickle"])) == (3, 2)
    assert not (agent.task_dir("p") / "result.json").exists()


def test_call_without_worker_source_is_an_error(agents: StartAgent, tmp_path: Path) -> None:
    agent = agents()
    agent.send({"op": "run", "key": "a", "cmd": None, "dir": "tasks/a", "env": {},
                "timeout": None, "outputs": [], "links": [],
                "call": {"target": "mod:count", "args": [], "kwargs": {}}})
    done = agent.expect("done", "a")
    assert "worker" in done["error"]


def test_workers_die_with_the_agent(agent: AgentProc, tmp_path: Path) -> None:
    pid = json.loads(call(agent, "a", "mod:count", tmp_path, 1)["result"])["pid"]
    agent.send({"op": "exit"})
    assert wait_until(lambda: not alive(pid), 5)


def pickled_run(key: str, fn: Any, *args: Any, env: dict[str, str] | None = None,
                **fields: Any) -> dict[str, Any]:
    payload = base64.b64encode(pickle.dumps((fn, args, {}))).decode()
    return {"op": "run", "key": key, "cmd": None, "dir": f"1/{key}/1", "env": env or {},
            "timeout": None, "outputs": [], "links": [], "call": {"pickle": payload},
            **fields}


def queue_behind_a_busy_slot(agent: AgentProc, *runs: dict[str, Any]) -> None:
    """One slot, busy for 0.5 s: the runs wait in the agent's queue, then go together."""
    agent.send({"op": "slots", "n": 1})
    agent.write(b"".join(encode(run) for run in [pickled_run("busy", time.sleep, 0.5), *runs]))
    assert agent.expect("done", "busy")["exit"] == 0


def test_queued_executor_calls_go_to_one_worker_together(agent: AgentProc) -> None:
    queue_behind_a_busy_slot(agent, pickled_run("a", time.sleep, 0.3),
                             pickled_run("b", os.getenv, "MY", env={"MY": "1"}),
                             pickled_run("c", os.getenv, "MY", env={"MY": "2"}),
                             pickled_run("d", os.getenv, "MY"))
    done = {key: agent.expect("done", key) for key in "abcd"}
    values = {key: pickle.loads(base64.b64decode(done[key]["pickle"])) for key in "bcd"}
    assert values == {"b": "1", "c": "2", "d": None}  # each call its own environment
    # `b` ran after `a` in the same batch; its wall time is its own, not its wait
    assert done["a"]["wall"] >= 0.3 and done["b"]["wall"] < 0.2


def test_a_call_that_kills_its_worker_fails_the_calls_sent_with_it(agent: AgentProc) -> None:
    queue_behind_a_busy_slot(agent, pickled_run("a", os.getpid), pickled_run("b", os._exit, 5),
                             pickled_run("c", os.getpid))
    for key in "abc":
        done = agent.expect("done", key)
        assert done["exit"] == 5 and "with 2 other calls sent to it together" in done["error"]
    agent.send(pickled_run("after", os.getpid))  # a fresh worker takes the next call
    assert agent.expect("done", "after")["exit"] == 0


def test_only_executor_calls_without_timeout_links_or_outputs_are_batched() -> None:
    assert batchable(pickled_run("a", os.getpid))
    assert not batchable(pickled_run("a", os.getpid, timeout=5))
    assert not batchable(pickled_run("a", os.getpid, links=[["x", "/tmp/x"]]))
    assert not batchable(pickled_run("a", os.getpid, outputs=["*.txt"]))
    assert not batchable({"op": "run", "key": "a", "cmd": "true"})
    assert not batchable({"op": "run", "key": "a", "call": {"target": "m:f"}})


def result_of(done: dict[str, Any]) -> Any:
    assert done["exit"] == 0, done
    return pickle.loads(base64.b64decode(done["pickle"]))


def test_executor_calls_run_in_their_workers_directory_and_keep_only_output(
        agent: AgentProc, tmp_path: Path) -> None:
    work = tmp_path / "w"
    agent.send(pickled_run("where", os.getcwd))
    home = Path(result_of(agent.expect("done", "where")))
    assert home.parent == work / ".workers" and home.name.isdigit()
    assert not (work / "1" / "where").exists()  # it printed nothing: no directory at all
    agent.send(pickled_run("talk", exec, "import os; print('out'); os.write(2, b'err')"))
    result_of(agent.expect("done", "talk"))
    assert (work / "1" / "talk" / "1" / "stdout").read_text() == "out\n"
    assert (work / "1" / "talk" / "1" / "stderr").read_text() == "err"
    agent.send(pickled_run("quiet", exec, "open('scratch.txt', 'w').write('kept')"))
    result_of(agent.expect("done", "quiet"))
    assert not (work / "1" / "quiet").exists()  # the spool was emptied between calls
    assert (home / "scratch.txt").read_text() == "kept"  # the worker's directory, shared


def test_output_of_a_call_that_kills_its_worker_is_kept(agent: AgentProc, tmp_path: Path) -> None:
    agent.send(pickled_run("where", os.getcwd))
    home = Path(result_of(agent.expect("done", "where")))
    agent.send(pickled_run("dies", exec, "import os, sys\nprint('last words')\n"
                                         "sys.stdout.flush()\nos._exit(4)"))
    done = agent.expect("done", "dies")
    assert done["exit"] == 4 and "worker died" in done["error"]
    assert (tmp_path / "w" / "1" / "dies" / "1" / "stdout").read_text() == "last words\n"
    assert not home.exists()  # the dead worker's directory is gone


def test_a_silent_executor_call_reports_empty_logs_inline(agent: AgentProc,
                                                          tmp_path: Path) -> None:
    agent.send(pickled_run("quiet", os.getpid, inline=1000))  # as to an SSH node
    done = agent.expect("done", "quiet")
    assert done["files"] == {"stdout": "", "stderr": ""}  # nothing for the controller to fetch
    assert not (tmp_path / "w" / "1" / "quiet").exists()


def _worker_dirs(agent: AgentProc) -> set[int]:
    root = agent.workdir / ".workers"
    return {int(p.name) for p in root.iterdir()} if root.is_dir() else set()


def test_warm_starts_idle_workers_ahead_and_calls_use_them(agent: AgentProc,
                                                          tmp_path: Path) -> None:
    agent.send({"op": "worker", "source": worker_source(), "warm": 2})
    assert wait_until(lambda: len(_worker_dirs(agent)) == 2, 10), "two warm workers"
    warm = _worker_dirs(agent)
    pids = {json.loads(call(agent, key, "mod:count", tmp_path, 1)["result"])["pid"]
            for key in ("a", "b")}
    assert pids <= warm  # no interpreter was started for the calls
    assert _worker_dirs(agent) == warm


def test_warm_zero_stops_the_idle_workers(agent: AgentProc) -> None:
    agent.send({"op": "worker", "source": worker_source(), "warm": 2})
    assert wait_until(lambda: len(_worker_dirs(agent)) == 2, 10), "two warm workers"
    pids = _worker_dirs(agent)
    agent.send({"op": "worker", "source": worker_source(), "warm": 0})
    assert wait_until(lambda: not _worker_dirs(agent), 10), "the warm workers to go"
    assert wait_until(lambda: not any(alive(pid) for pid in pids), 10), "the warm workers to exit"


def test_bad_warm_count_is_an_error(agent: AgentProc) -> None:
    agent.send({"op": "worker", "source": worker_source(), "warm": -1})
    assert "warm" in agent.expect("error")["error"]
