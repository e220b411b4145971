"""`batchpool run` and `batchpool job ...` end to end on the embedded local pool."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from helpers import Batchpool, stop, wait_for, write

from batchpool.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_montecarlo_pi_map_reduce(bp: Batchpool, tmp_path: Path) -> None:
    spec = ROOT / "jobs" / "montecarlo-pi" / "job.toml"
    small = write(tmp_path / "pi" / "job.toml",
                  spec.read_text().replace("0-63", "0-7").replace("2000000", "200000"))
    (tmp_path / "pi" / "pi.py").write_text((spec.parent / "pi.py").read_text())
    result = bp("run", str(small), check=True)
    assert "succeeded" in result.stdout
    report = bp.json("job", "show", "1")
    assert report["state"] == "succeeded" and report["succeeded"] == 9
    out = tmp_path / "out"
    bp("job", "outputs", "1", "--dest", str(out), check=True)
    pi = json.loads((out / "reduce" / "pi.json").read_text())
    assert pi["shards"] == 8 and pi["samples"] == 8 * 200_000
    assert abs(pi["pi"] - math.pi) < 5 * pi["stderr"]
    assert (out / "map[3]" / "part.json").is_file()
    logs = bp("job", "logs", "1", "reduce", "--stdout", check=True)
    assert logs.stdout.startswith("pi = 3.1")


def test_placeholder_values_are_literal(bp: Batchpool, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    spec = write(tmp_path / "job.yaml", f"""
name: quoting
tasks:
  - id: echo
    command: printf '%s' {{v}} > out.txt
    params:
      v: ["x; touch {pwned}", "$(touch {pwned})", "a b 'c'"]
    outputs: [out.txt]
""")
    bp("run", str(spec), check=True)
    assert not pwned.exists()
    out = tmp_path / "o"
    bp("job", "outputs", "1", "--dest", str(out), check=True)
    values = sorted((out / f"echo[{i}]" / "out.txt").read_text() for i in range(3))
    assert values == sorted([f"x; touch {pwned}", f"$(touch {pwned})", "a b 'c'"])


def test_task_environment(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", """
name = "env"
env = { JOBVAR = "j" }
[[tasks]]
id = "show"
array = "4-5"
env = { TASKVAR = "t" }
command = "env | grep -E '^(BATCHPOOL_|JOBVAR|TASKVAR)' | sort > env.txt; pwd >> env.txt"
outputs = ["env.txt"]
""")
    bp("run", str(spec), check=True)
    out = tmp_path / "o"
    bp("job", "outputs", "1", "--dest", str(out), check=True)
    text = (out / "show[5]" / "env.txt").read_text()
    for line in ("BATCHPOOL_JOB_ID=1", "BATCHPOOL_TASK_ID=show[5]", "BATCHPOOL_TASK_INDEX=5",
                 "BATCHPOOL_ATTEMPT=1", "BATCHPOOL_NODE=local", "JOBVAR=j", "TASKVAR=t"):
        assert line in text
    assert "BATCHPOOL_INPUTS_DIR=" in text
    assert text.strip().endswith("/1/show@5/1")  # a fresh attempt directory


def test_failure_fails_dependants_and_exit_status(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", """
name = "fails"
[defaults]
max_attempts = 1
[[tasks]]
id = "map"
array = "0-3"
command = "test {index} -ne 2"
[[tasks]]
id = "reduce"
depends_on = ["map"]
command = "true"
""")
    result = bp("run", str(spec))
    assert result.returncode == 1
    report = bp.json("job", "show", "1")
    assert report["state"] == "failed"
    assert report["groups"]["map"]["failed"] == 1 and report["groups"]["map"]["succeeded"] == 3
    assert report["groups"]["reduce"]["failed"] == 1
    assert report["failures"][0]["task"] == "map[2]"
    assert report["failures"][0]["reason"] == "exit 1 after 1 attempt"
    assert report["settled_groups"][0]["reason"] == "dependency failed"


def test_retry_until_success(bp: Batchpool, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    spec = write(tmp_path / "job.toml", f"""
name = "flaky"
[[tasks]]
id = "flaky"
max_attempts = 3
command = "echo x >> {counter}; test $(wc -l < {counter}) -ge 2"
""")
    bp("run", str(spec), check=True)
    task = bp.json("job", "show", "1")
    assert task["succeeded"] == 1
    assert counter.read_text().count("x") == 2


def test_timeout_kills_the_process_group(bp: Batchpool, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    spec = write(tmp_path / "job.toml", f"""
name = "slow"
[[tasks]]
id = "slow"
max_attempts = 1
timeout = "1s"
command = "sleep 300 & echo $! > {pidfile}; wait"
""")
    started = time.monotonic()
    result = bp("run", str(spec))
    assert result.returncode == 1
    assert time.monotonic() - started < 30
    report = bp.json("job", "show", "1")
    assert report["failures"][0]["reason"].startswith("timed out")
    child = int(pidfile.read_text())
    assert not _alive(child)


def test_on_task_failure_cancel(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", """
name = "stop-early"
on_task_failure = "cancel"
[[tasks]]
id = "bad"
max_attempts = 1
command = "exit 3"
[[tasks]]
id = "long"
array = "0-20"
command = "sleep 1"
""")
    result = bp("run", str(spec))
    assert result.returncode == 1
    report = bp.json("job", "show", "1")
    assert report["state"] == "failed" and "task bad failed" in report["reason"]
    assert report["cancelled"] > 0


def test_cancel_from_another_process(bp: Batchpool, tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    spec = write(tmp_path / "job.toml", f"""
name = "cancel-me"
[[tasks]]
id = "sleepy"
array = "0-9"
command = "echo $$ >> {pidfile}; sleep 300"
""")
    run = bp.spawn("run", str(spec))
    try:
        wait_for(lambda: pidfile.exists() and len(pidfile.read_text().split()) >= 2)
        bp("job", "cancel", "1", check=True)
        run.wait(timeout=30)
        assert run.returncode == 1
    finally:
        stop(run)
    report = bp.json("job", "show", "1")
    assert report["state"] == "cancelled"
    assert report["cancelled"] == 10
    for pid in map(int, pidfile.read_text().split()):
        assert not _alive(pid)


def test_resume_after_sigkill_does_not_rerun_succeeded(bp: Batchpool, tmp_path: Path) -> None:
    log = tmp_path / "runs.log"
    spec = write(tmp_path / "job.toml", f"""
name = "resumable"
[[tasks]]
id = "step"
array = "0-29"
command = "echo {{index}} >> {log}; sleep 0.2"
""")
    run = bp.spawn("run", str(spec))
    try:
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= 8)
        os.kill(run.pid, signal.SIGKILL)
        run.wait(timeout=10)
    finally:
        stop(run)
    before = bp.json("job", "show", "1")
    assert before["state"] == "running"
    done_before = {t["task_id"] for t in _tasks(bp, "succeeded")}
    assert done_before, "some tasks should have been recorded as succeeded"
    resumed = bp("job", "resume", "1", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = bp.json("job", "show", "1")
    assert after["state"] == "succeeded" and after["succeeded"] == 30
    runs: dict[str, int] = {}
    for index in log.read_text().split():
        runs[f"step[{index}]"] = runs.get(f"step[{index}]", 0) + 1
    assert all(runs[t] == 1 for t in done_before), runs
    assert set(runs) == {f"step[{i}]" for i in range(30)}


def test_spec_error_reports_file_and_line(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "bad.toml", 'name = "x"\n[[tasks]]\nid = "a"\ncommand = "true"\n'
                                        'array = "5-1"\n')
    result = bp("run", str(spec))
    assert result.returncode == 2
    assert "bad.toml:5" in result.stderr and "tasks[0].array" in result.stderr
    assert bp.json("job", "list") == []  # nothing was submitted


def test_run_json_and_plain_progress(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "j"\n[[tasks]]\nid = "a"\narray = "0-3"\n'
                                        'command = "true"\n')
    report = bp.json("run", str(spec))
    assert report["state"] == "succeeded" and report["succeeded"] == 4
    plain = bp("run", str(spec), check=True)
    assert "job 2 j: 4/4 done, 4 succeeded, 0 failed" in plain.stderr


def test_million_task_array_is_accepted_quickly(bp: Batchpool, tmp_path: Path) -> None:
    from batchpool.spec import load_spec

    spec = write(tmp_path / "big.toml", 'name = "big"\n[[tasks]]\nid = "a"\n'
                                        'array = "0-999999"\ncommand = "true"\n')
    started = time.monotonic()
    store = Store(bp.home / "batchpool.db")
    job_id = store.submit(load_spec(spec), "local")
    assert time.monotonic() - started < 5
    assert store.counts(job_id)["a"]["queued"] == 1_000_000


def _tasks(bp: Batchpool, state: str) -> list[dict[str, object]]:

    store = Store(bp.home / "batchpool.db")
    return [{"task_id": t.task_id} for t in store.tasks(1, states=(state,))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False




@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHPOOL_RETRY_BACKOFF", "0.1")


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_run_takes_over_the_agent_it_started_before_loading_the_job(
        bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "one"\n[[tasks]]\nid = "t"\ncommand = "true"\n')
    result = bp("-vv", "run", str(spec), check=True)
    assert "taking over the agent started early" in result.stderr, result.stderr
    assert result.stderr.count("taking over") == 1


def test_a_bad_spec_leaves_no_agent_behind(bp: Batchpool, tmp_path: Path) -> None:
    spec = write(tmp_path / "job.toml", 'name = "bad"\n[[tasks]]\nid = "t"\ncomand = "true"\n')
    result = bp("run", str(spec))
    assert result.returncode == 2 and "comand" in result.stderr
    # the early agent's command line names its workdir, under this test's BATCHPOOL_HOME
    wait_for(lambda: not _processes_mentioning(str(bp.home)), 5, "the early agent to end")


def test_a_job_without_calls_keeps_no_warm_workers(bp: Batchpool, tmp_path: Path) -> None:
    # `batchpool run` starts workers with its early agent, before it knows the job;
    # the session then tells the agent this job needs none.
    workers = bp.home / "work" / ".workers"
    spec = write(tmp_path / "job.toml", f"""
name = "no-calls"
[[tasks]]
id = "look"
command = "sleep 1; ls {workers} 2>/dev/null | wc -l"
""")
    bp("run", str(spec), check=True)
    assert bp("job", "logs", "1", "look", "--stdout", check=True).stdout.strip() == "0"


def test_plain_progress_shows_running_tasks_while_the_job_runs(bp: Batchpool,
                                                               tmp_path: Path) -> None:
    # the display starts shortly after the run (runner.DISPLAY_AFTER), then a line per
    # interval, and the final state when the job ends
    spec = write(tmp_path / "job.toml", 'name = "slow"\n[[tasks]]\nid = "a"\n'
                                        'command = "sleep 1"\n')
    lines = bp("run", str(spec), check=True).stderr.splitlines()
    progress = [line for line in lines if line.startswith("job 1 slow:")]
    assert "0/1 done, 0 succeeded, 0 failed, 1 running, 0 queued" in progress[0], lines
    assert "1/1 done, 1 succeeded" in progress[-1], lines


def test_warm_workers_start_after_the_start_task(bp: Batchpool, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker interpreter started before the start task would never see what it
    # installs: here a module in a user site directory that does not exist yet.
    userbase = tmp_path / "userbase"
    monkeypatch.setenv("PYTHONUSERBASE", str(userbase))
    site = userbase / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages"
    config = write(tmp_path / "batchpool.toml", f"""
[pools.local]
provider = "local"
start_task = "mkdir -p {site} && printf 'def f():\\\\n    return 7\\\\n' > {site}/userfoo.py"
""")
    spec = write(tmp_path / "job.toml", 'name = "user-site"\n[[tasks]]\nid = "t"\n'
                                        'call = "userfoo:f"\n')
    bp("run", str(spec), "--config", str(config), check=True)
    assert bp.json("job", "show", "1")["state"] == "succeeded"


def test_a_job_with_one_call_keeps_one_warm_worker(bp: Batchpool, tmp_path: Path) -> None:
    workers = bp.home / "work" / ".workers"
    write(tmp_path / "probe.py", f"""
import os, time

def count():
    time.sleep(0.5)  # any surplus worker started ahead has been stopped by now
    return len(os.listdir({str(workers)!r}))
""")
    spec = write(tmp_path / "job.toml", 'name = "one-call"\nfiles = ["probe.py"]\n'
                                        '[[tasks]]\nid = "t"\ncall = "probe:count"\n')
    bp("run", str(spec), check=True)
    assert bp.json("job", "show", "1")["state"] == "succeeded"
    store = Store(bp.home / "batchpool.db")
    (attempt,) = store.attempts(1)
    assert attempt.result == "1"
