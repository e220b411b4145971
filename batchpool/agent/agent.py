"""The batchpool node agent: one per node, driven over a byte stream.

This file is sent verbatim over the channel and run with ``python3 -c BOOTSTRAP``
(see ``launch.py``), so it must stay a single, self-contained, stdlib-only module that
runs on any python3 >= 3.8. Annotations are strings (``from __future__``), so builtin
generics are fine in them, but nothing newer than 3.8 may be evaluated at run time.

Usage: ``python3 agent.py WORKDIR HEARTBEAT`` (or via the bootstrap). Messages are
newline-delimited compact JSON objects, read from stdin and written to stdout; the
protocol is described in docs/protocol.md.

Threads: the main thread reads messages and starts tasks; one reaper thread waits for
any child to exit and reports it; one timer thread sends heartbeats and enforces
timeouts and kill grace periods. There is no thread per task. Python calls (``call``
tasks and Executor calls) run in warm worker processes (worker.py, whose source the
controller sends once), each served by one thread of its own.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import errno
import glob
import heapq
import itertools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import FrameType

PROTOCOL_VERSION = 1
GRACE = 2.0  # seconds between SIGTERM and SIGKILL (cancel, timeout)
SHELL = "/bin/sh"

_HB, _TIMEOUT, _GRACE, _FLUSH = 0, 1, 2, 3  # timer event kinds
HOLD = 0.02  # seconds a `done` line may wait to go out with others (see Agent.report)
RESULT_FILE = "result.json"  # where a worker leaves a call's JSON return value
BATCH_MAX = 32  # Executor calls handed to one worker at once, at most (see Agent.pump)
SPARE_DIR = ".spare"  # under the workdir: emptied attempt directories kept for reuse
SPARE_MAX = 64  # spares one agent keeps; beyond them, empty attempt directories stay
_encode = json.JSONEncoder(separators=(",", ":")).encode  # ASCII-safe: surrogates escaped


class BadMessage(ValueError):
    """A message that breaks the protocol; reported to the controller, not fatal."""


class Task:
    """One running attempt: a ``/bin/sh -c`` leader in its own session."""

    __slots__ = (
        "cancelled",
        "dir",
        "finished",
        "inline",
        "key",
        "links",
        "outputs",
        "pid",
        "proc",
        "scratch",
        "start",
        "term_sent",
        "timed_out",
        "timeout",
    )

    def __init__(self, key: str, directory: str, outputs: list[str], links: list[str],
                 proc: subprocess.Popen[bytes] | None, start: float) -> None:
        self.key = key
        self.dir = directory
        self.outputs = outputs
        self.links = links  # link names relative to dir, normalised
        self.inline = 0  # send back stdout, stderr and outputs up to this size in `done`
        self.proc: subprocess.Popen[bytes] | None = proc  # kept alive until reaped
        self.pid = proc.pid if proc is not None else 0  # also the process group id
        self.start = start
        self.timeout: float | None = None
        self.scratch = False  # a call run in its worker's directory (see worker.py)
        self.timed_out = False
        self.cancelled = False
        self.term_sent = False
        self.finished = False  # set under Agent.lock before the leader is reaped

    def attach(self, proc: subprocess.Popen[bytes], start: float) -> None:
        """A call: its process is the worker it was handed to."""
        self.proc, self.pid, self.start = proc, proc.pid, start


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group; a group that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def exit_status(status: int) -> tuple[int | None, int | None]:
    """(exit code, signal number) from a wait status; exactly one is not None."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


def match_outputs(directory: str, patterns: list[str], links: list[str]) -> dict[str, list[str]]:
    """For each glob, the sorted paths it matches relative to ``directory``.

    ``**`` matches any number of directories. Links the agent made for the attempt
    (its inputs) and anything reached through them are not outputs and are left out.
    """
    base = glob.escape(directory)
    cut = len(directory) + 1
    result: dict[str, list[str]] = {}
    for pattern in patterns:
        found = set()
        for path in glob.iglob(os.path.join(base, pattern), recursive=True):
            rel = os.path.normpath(path[cut:]) if path.startswith(directory + os.sep) else ""
            if not rel or rel == ".":
                continue
            if links and any(rel == name or rel.startswith(name + os.sep) for name in links):
                continue
            found.add(rel)
        result[pattern] = sorted(found)
    return result


def done_message(task: Task, code: int | None, sig: int | None, cpu: float,
                 error: str | None) -> dict[str, Any]:
    """The `done` message of an ended attempt: its outputs matched, small files inline."""
    outputs: dict[str, list[str]] = {}
    if code == 0 and task.outputs:
        try:
            outputs = match_outputs(task.dir, task.outputs, task.links)
        except (OSError, ValueError, RecursionError) as exc:
            error = f"cannot match outputs: {exc}"
    done: dict[str, Any] = {
        "op": "done", "key": task.key, "exit": code, "signal": sig,
        "timed_out": task.timed_out, "cancelled": task.cancelled, "cpu": round(cpu, 6),
        "wall": round(time.monotonic() - task.start, 6), "outputs": outputs, "error": error}
    if task.inline:
        done["files"] = inline_files(task.dir, outputs, task.inline)
    return done


def inline_files(directory: str, outputs: dict[str, list[str]], limit: int) -> dict[str, str]:
    """stdout, stderr and output files of at most `limit` bytes each (and 4 x `limit` in
    all), base64-encoded: the controller gets them in `done` instead of fetching each."""
    found: dict[str, str] = {}
    budget = 4 * limit
    names = ["stdout", "stderr", *sorted({p for paths in outputs.values() for p in paths})]
    for name in names:
        path = os.path.join(directory, name)
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:  # a log never written (an Executor call that printed
            if name in ("stdout", "stderr"):  # nothing): empty, nothing to fetch
                found[name] = ""
            continue
        except OSError:
            continue
        try:
            if size > limit or size > budget or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError:
            continue
        if len(data) <= limit:
            found[name] = base64.b64encode(data).decode("ascii")
            budget -= len(data)
    return found


def _relative_name(name: object, what: str) -> str:
    """A normalised relative path that stays inside its base directory."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise BadMessage(f"{what} must be a non-empty string")
    norm = os.path.normpath(name)
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep) or norm == ".":
        raise BadMessage(f"{what} {name!r} must be a relative path inside the task directory")
    return norm


def parse_run(msg: dict[str, Any]) -> tuple[str, dict[str, str], float | None,
                                             list[tuple[str, str]], list[str]]:
    """Validate a run message: (cmd, env, timeout, links, outputs); raises BadMessage."""
    cmd = msg.get("cmd")
    if not isinstance(cmd, str) and not ("call" in msg and cmd is None):
        raise BadMessage("run: cmd must be a string")
    env = msg.get("env") or {}
    if not isinstance(env, dict) or not all(
            type(k) is str and type(v) is str for k, v in env.items()):
        raise BadMessage("run: env must map strings to strings")
    timeout = msg.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise BadMessage("run: timeout must be null or a positive number")
        timeout = float(timeout)
    links: list[tuple[str, str]] = []
    for item in msg.get("links") or []:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise BadMessage("run: each link must be [name, target]")
        name = _relative_name(item[0], "run: link name")
        target = item[1]
        if not isinstance(target, str) or not target or "\0" in target:
            raise BadMessage("run: link target must be a non-empty string")
        links.append((name, target))
    outputs = msg.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(g, str) and g for g in outputs):
        raise BadMessage("run: outputs must be a list of non-empty strings")
    for pattern in outputs:
        if os.path.isabs(pattern) or ".." in pattern.split("/"):
            raise BadMessage(f"run: output glob {pattern!r} must be relative, without '..'")
    return cmd or "", env, timeout, links, outputs


def parse_call(msg: dict[str, Any]) -> dict[str, Any] | None:
    """The worker request of a run message's ``call`` (None: a shell command task)."""
    call = msg.get("call")
    if call is None:
        return None
    if not isinstance(call, dict):
        raise BadMessage("run: call must be an object")
    if "pickle" in call:
        if not isinstance(call["pickle"], str):
            raise BadMessage("run: call.pickle must be a base64 string")
        return {"pickle": call["pickle"]}
    target = call.get("target")
    if not isinstance(target, str) or ":" not in target:
        raise BadMessage("run: call.target must be 'module:function'")
    args, kwargs = call.get("args") or [], call.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise BadMessage("run: call.args must be a list and call.kwargs an object")
    return {"target": target, "args": args, "kwargs": kwargs}


def scratch(call: dict[str, Any], links: list[Any], outputs: list[str]) -> bool:
    """An Executor call (pickled, no links, no outputs): it runs in its worker's own
    directory, and gets an attempt directory only for what it prints (worker.py)."""
    return "pickle" in call and not links and not outputs


def batchable(msg: dict[str, Any]) -> bool:
    """An Executor call that may share a worker hand-over with others: one with no
    timeout (a batch cannot time out call by call), no links and no outputs."""
    call = msg.get("call")
    return isinstance(call, dict) and "pickle" in call and msg.get("timeout") is None \
        and not msg.get("links") and not msg.get("outputs")


class Worker:
    """One warm worker process and the thread that feeds it calls, a batch at a time."""

    def __init__(self, agent: Agent, source: str) -> None:
        self.agent = agent
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            cwd=agent.workdir, close_fds=True, start_new_session=True)
        # batches of calls; None stops the worker (see Agent.warm)
        self.calls: queue.SimpleQueue[list[tuple[Task, dict[str, Any]]] | None] = \
            queue.SimpleQueue()
        threading.Thread(target=agent.guard, args=(self.serve,), name="worker",
                         daemon=True).start()

    @property
    def home(self) -> str:
        """The directory the worker makes for itself: where Executor calls run."""
        return os.path.join(self.agent.workdir, ".workers", str(self.proc.pid))

    def salvage(self) -> None:
        """After it died: give its spooled output to the call it was running (named in
        `current`), then remove its directory."""
        home = self.home
        with contextlib.suppress(OSError):
            with open(os.path.join(home, "current"), "rb") as handle:
                target = os.fsdecode(handle.read())
            for name in ("stdout", "stderr") if target else ():
                spooled = os.path.join(home, name)
                if os.path.getsize(spooled):
                    os.makedirs(target, exist_ok=True)
                    shutil.copyfile(spooled, os.path.join(target, name))
        shutil.rmtree(home, ignore_errors=True)

    def serve(self) -> None:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        while True:
            calls = self.calls.get()
            if calls is None:  # no longer wanted: end of input ends it
                stdin.close()
                self.proc.wait()
                stdout.close()
                shutil.rmtree(self.home, ignore_errors=True)
                return
            requests = [request for _, request in calls]
            replies: list[dict[str, Any]] | None = None
            try:
                stdin.write(_encode(requests[0] if len(requests) == 1 else
                                    {"batch": requests}).encode() + b"\n")
                stdin.flush()
                line = stdout.readline()
                if line:
                    reply = json.loads(line)
                    replies = reply["batch"] if len(requests) > 1 else [reply]
            except (OSError, ValueError, KeyError, TypeError):
                replies = None
            if replies is not None and len(replies) != len(calls):
                replies = None
            self.agent.calls_done(self, calls, replies)
            if replies is None:
                return


class Agent:
    """The agent's state and its three threads."""

    def __init__(self, workdir: str, heartbeat: float, reader: IO[bytes],
                 writer: IO[bytes]) -> None:
        self.workdir = workdir
        self.root = workdir.rstrip("/") + "/"  # attempt directories start with this
        self.heartbeat = heartbeat
        self.reader = reader
        self.out = writer
        self.wlock = threading.Lock()
        self.lock = threading.Lock()  # guards by_pid, by_key, spawning, Task.finished
        self.children = threading.Condition(self.lock)  # children registered/spawn finished
        self.spawning = 0  # spawns in flight (forked, maybe exited, not yet registered)
        self.by_pid: dict[int, Task] = {}
        self.by_key: dict[str, Task] = {}
        self.tcond = threading.Condition()
        self.heap: list[tuple[float, int, int, Task | None]] = []
        self.compact_at = 1024
        self.seq = itertools.count()
        self.devnull = -1
        self.exiting = False
        self.stop_requested = False  # a signal arrived during a spawn
        self.slots = 0  # tasks run at once; 0 = no limit. Beyond it runs wait here, in order
        self.active = 0  # admitted tasks: spawning or running (guarded by lock)
        self.waiting: collections.deque[dict[str, Any]] = collections.deque()
        self.worker_source: str | None = None  # sent by the controller before any call
        self.workers: set[Worker] = set()  # live worker processes (guarded by lock)
        self.idle_workers: list[Worker] = []  # of those, the ones free for a call
        self.spares: list[tuple[str, str]] = []  # (task dir, attempt name): see recycle
        self.held: list[bytes] = []  # `done` lines not sent yet (guarded by lock): report

    # ----------------------------------------------------------------- output

    def write(self, data: bytes) -> None:
        """Write whole lines and flush; a broken channel means the controller is gone."""
        try:
            with self.wlock:
                self.out.write(data)
                self.out.flush()
        except (OSError, ValueError):
            self.shutdown(0)

    def send(self, msg: dict[str, Any]) -> None:
        self.write(_encode(msg).encode() + b"\n")

    def error(self, text: str, key: str | None = None) -> None:
        msg: dict[str, Any] = {"op": "error", "error": text}
        if key is not None:
            msg["key"] = key
        self.send(msg)

    def done_error(self, key: str, text: str) -> None:
        self.send({"op": "done", "key": key, "exit": None, "signal": None, "timed_out": False,
                   "cancelled": False, "cpu": 0.0, "wall": 0.0, "outputs": {}, "error": text})

    # --------------------------------------------------------------- lifecycle

    def hello(self) -> dict[str, Any]:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
        return {"op": "hello", "version": PROTOCOL_VERSION, "pid": os.getpid(),
                "host": socket.gethostname(), "cores": cores,
                "python": ".".join(str(n) for n in sys.version_info[:3]), "workdir": self.workdir}

    def start(self) -> None:
        self.devnull = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.on_signal)
        # A Ctrl-C meant for a local controller must not kill the agent (the controller
        # decides); a Python-level handler, unlike SIG_IGN, is not inherited by tasks.
        signal.signal(signal.SIGINT, lambda signum, frame: None)
        self.adopt_spares()
        self.send(self.hello())
        threading.Thread(target=self.guard, args=(self.reap_loop,), name="reaper",
                         daemon=True).start()
        threading.Thread(target=self.guard, args=(self.timer_loop,), name="timer",
                         daemon=True).start()
        if self.heartbeat > 0:
            self.schedule(time.monotonic() + self.heartbeat, _HB, None)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Handlers run in the main thread between bytecodes. In the middle of a spawn the
        # new child may not be registered yet, so the spawn finishes the shutdown itself.
        if self.spawning:
            self.stop_requested = True
        else:
            self.shutdown(0)

    def guard(self, body: Any) -> None:
        """Run a thread body; if it crashes, say so and take everything down."""
        try:
            body()
        except BaseException as exc:
            if not self.exiting:
                try:
                    self.send({"op": "fatal", "error": f"{body.__name__}: {exc!r}"})
                finally:
                    self.shutdown(1)

    def shutdown(self, code: int) -> None:
        """SIGKILL every running process group, flush what we can, and exit now."""
        self.exiting = True
        locked = self.lock.acquire(timeout=0.5)  # may be called from a signal handler
        try:
            if locked and threading.current_thread() is not threading.main_thread():
                deadline = time.monotonic() + 1.0  # let a spawn in flight register its child
                while self.spawning and time.monotonic() < deadline:
                    self.children.wait(0.05)
            for task in list(self.by_pid.values()):
                if not task.finished:
                    killpg(task.pid, signal.SIGKILL)
            for worker in list(self.workers):
                killpg(worker.proc.pid, signal.SIGKILL)
            for worker in list(self.workers):  # reaped here: no zombies left to init
                with contextlib.suppress(Exception):
                    worker.proc.wait(timeout=0.2)
                    shutil.rmtree(worker.home, ignore_errors=True)
        finally:
            if locked:
                self.lock.release()
        if self.wlock.acquire(timeout=0.5):
            with contextlib.suppress(OSError, ValueError):
                self.out.flush()
        os._exit(code)

    # ------------------------------------------------------------ main thread

    def serve(self) -> None:
        """Read and handle messages until end of input, then stop everything."""
        readline = self.reader.readline
        while True:
            line = readline()
            if not line:
                self.shutdown(0)
            if line.strip():
                self.handle(line)

    def handle(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError as exc:
            self.error(f"malformed message ({exc}): {line[:200]!r}")
            return
        if not isinstance(msg, dict):
            self.error(f"malformed message (not an object): {line[:200]!r}")
            return
        op = msg.get("op")
        if op == "run":
            self.run(msg)
        elif op == "slots":
            n = msg.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                self.error("slots: n must be an integer >= 0")
                return
            self.slots = n
            self.pump()
        elif op == "worker":
            source = msg.get("source")
            if not isinstance(source, str) or not source:
                self.error("worker: source must be a non-empty string")
                return
            self.worker_source = source
            warm = msg.get("warm")
            if warm is not None:
                if not isinstance(warm, int) or isinstance(warm, bool) or warm < 0:
                    self.error("worker: warm must be an integer >= 0")
                    return
                self.warm(warm)
        elif op == "kill":
            key = msg.get("key")
            if not isinstance(key, str):
                self.error("kill: key must be a string")
            else:
                self.kill(key)
        elif op == "ping":
            self.send({"op": "pong", "t": msg.get("t")})
        elif op == "exit":
            self.shutdown(0)
        else:
            self.error(f"unknown op {op!r}", msg.get("key") if isinstance(
                msg.get("key"), str) else None)

    def resolve(self, path: str) -> str:
        return os.path.normpath(os.path.join(self.workdir, path))

    def run(self, msg: dict[str, Any]) -> None:
        """Start a task now, or queue it here until a slot frees (prefetched work)."""
        key = msg.get("key")
        if not isinstance(key, str) or not key:
            self.error("run: key must be a non-empty string")
            return
        with self.lock:
            if self.slots and (self.active >= self.slots or self.waiting):
                self.waiting.append(msg)
                return
            self.active += 1
        if not self.launch([msg]):
            self.release()

    def release(self) -> None:
        """A slot freed (a task ended or never started): start waiting tasks."""
        with self.lock:
            self.active -= 1
        self.pump()

    def pump(self) -> None:
        """Start waiting tasks while there are free slots (called by any thread).

        Executor calls waiting in a row go to one worker together, as one batch taking
        one slot, when the queue is long: their share of it, at most BATCH_MAX.
        """
        while not self.exiting:
            with self.lock:
                waiting = self.waiting
                if not waiting or (self.slots and self.active >= self.slots):
                    return
                batch = [waiting.popleft()]
                if batchable(batch[0]):
                    room = min(BATCH_MAX, 1 + len(waiting) // max(1, self.slots))
                    while len(batch) < room and waiting and batchable(waiting[0]):
                        batch.append(waiting.popleft())
                self.active += 1
            if not self.launch(batch):
                with self.lock:
                    self.active -= 1

    def launch(self, msgs: list[dict[str, Any]]) -> bool:
        """Start a run, or hand a batch of calls to one worker; False if none started."""
        calls: list[tuple[Task, dict[str, Any]]] = []
        for msg in msgs:
            prepared = self.prepare(msg, msg["key"])
            if prepared is None:
                continue
            cmd, call, env, timeout, links, outputs, inline, directory = prepared
            if call is None:  # a shell command: never part of a batch
                return self.spawn(msg["key"], cmd, env, timeout, links, outputs, inline,
                                  directory)
            if "target" in call:
                outputs = [*outputs, RESULT_FILE]
            task = Task(msg["key"], directory, outputs, [name for name, _ in links], None,
                        time.monotonic())
            task.inline = inline
            task.timeout = timeout
            request = {"dir": directory, "env": env, **call}
            if scratch(call, links, outputs):
                task.scratch = request["scratch"] = True
            calls.append((task, request))
        return bool(calls) and self.launch_calls(calls)

    def prepare(self, msg: dict[str, Any], key: str) -> tuple[Any, ...] | None:
        """Check a run and make its directory and links; None (reported) if it cannot run."""
        try:
            cmd, env, timeout, links, outputs = parse_run(msg)
            call = parse_call(msg)
            inline = msg.get("inline") or 0
            if isinstance(inline, bool) or not isinstance(inline, int) or inline < 0:
                raise BadMessage("run: inline must be a byte count >= 0")
            directory = msg.get("dir")
            if not isinstance(directory, str) or not directory or "\0" in directory:
                raise BadMessage("run: dir must be a non-empty string")
        except BadMessage as exc:
            self.done_error(key, str(exc))
            return None
        if key in self.by_key:
            self.error(f"run: key {key!r} is already running; ignored", key)
            return None
        directory = self.resolve(directory)
        if call is not None and scratch(call, links, outputs):
            # its worker makes the directory, if the call leaves anything
            return cmd, call, env, timeout, links, outputs, inline, directory
        try:
            if not self.reuse(directory):
                os.makedirs(directory, exist_ok=True)
            for name, target in links:
                self.link(directory, name, target)
        except OSError as exc:
            self.done_error(key, f"cannot prepare {directory}: {exc}")
            return None
        return cmd, call, env, timeout, links, outputs, inline, directory

    def spawn(self, key: str, cmd: str, env: dict[str, str], timeout: float | None,
              links: list[tuple[str, str]], outputs: list[str], inline: int,
              directory: str) -> bool:
        """Spawn a shell command in its prepared directory; False if it did not start."""
        out_fd = err_fd = -1
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            out_fd = os.open(os.path.join(directory, "stdout"), flags, 0o666)
            err_fd = os.open(os.path.join(directory, "stderr"), flags, 0o666)
        except OSError as exc:
            for fd in (out_fd, err_fd):
                if fd >= 0:
                    os.close(fd)
            self.done_error(key, f"cannot prepare {directory}: {exc}")
            return False
        full_env: dict[str, str] | None = None
        if env:
            full_env = dict(os.environ)
            full_env.update(env)
        # The spawn runs without the lock (it releases the GIL while the child execs, so
        # the reaper keeps reporting); a child that exits before it is registered below
        # is left a zombie by the reaper until `spawning` drops back to zero.
        with self.lock:
            self.spawning += 1
        task: Task | None = None
        try:
            start = time.monotonic()
            proc = subprocess.Popen(
                [SHELL, "-c", cmd], cwd=directory, env=full_env, stdin=self.devnull,
                stdout=out_fd, stderr=err_fd, close_fds=True, start_new_session=True)
            task = Task(key, directory, outputs, [name for name, _ in links], proc, start)
            task.inline = inline
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.done_error(key, f"cannot start {SHELL}: {exc}")
        finally:
            os.close(out_fd)
            os.close(err_fd)
            with self.lock:
                if task is not None:  # registered before `spawning` drops: see on_signal
                    self.by_pid[task.pid] = task
                    self.by_key[key] = task
                self.spawning -= 1
                self.children.notify_all()
        if self.stop_requested:
            self.shutdown(0)
        if task is None:
            return False
        if timeout is not None:
            self.schedule(start + timeout, _TIMEOUT, task)
        return True

    def warm(self, n: int) -> None:
        """Keep `n` idle workers started ahead of the calls (stopping any beyond), so that
        the first calls find an interpreter up instead of waiting for one to start."""
        assert self.worker_source is not None
        with self.lock:
            surplus = self.idle_workers[n:]
            del self.idle_workers[n:]
            self.workers.difference_update(surplus)
            missing = n - len(self.idle_workers)
        for worker in surplus:
            worker.calls.put(None)
        for _ in range(missing):
            try:
                worker = Worker(self, self.worker_source)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                self.error(f"cannot start a worker: {exc}")
                return
            with self.lock:
                self.workers.add(worker)
                self.idle_workers.append(worker)

    def launch_calls(self, calls: list[tuple[Task, dict[str, Any]]]) -> bool:
        """Hand calls to an idle warm worker, starting one if none is free."""
        if self.worker_source is None:
            for task, _ in calls:
                self.done_error(task.key, "no worker source: the controller sent no 'worker'"
                                " message")
            return False
        with self.lock:
            worker = self.idle_workers.pop() if self.idle_workers else None
        if worker is None:
            try:
                worker = Worker(self, self.worker_source)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                for task, _ in calls:
                    self.done_error(task.key, f"cannot start a worker: {exc}")
                return False
        start = time.monotonic()
        with self.lock:
            self.workers.add(worker)
            for task, _ in calls:
                task.attach(worker.proc, start)
                self.by_key[task.key] = task
        for task, _ in calls:
            if task.timeout is not None:
                self.schedule(start + task.timeout, _TIMEOUT, task)
        worker.calls.put(calls)
        return True

    def calls_done(self, worker: Worker, calls: list[tuple[Task, dict[str, Any]]],
                   replies: list[dict[str, Any]] | None) -> None:
        """A batch of calls ended (replies None: its worker died, e.g. killed for a timeout)."""
        with self.lock:
            for task, _ in calls:
                task.finished = True
                if self.by_key.get(task.key) is task:
                    del self.by_key[task.key]
            self.active -= 1
            if replies is None:
                self.workers.discard(worker)
            else:
                self.idle_workers.append(worker)
        died = None
        if replies is None:
            status = worker.proc.poll()  # it may have exited on its own (os._exit)
            killpg(worker.proc.pid, signal.SIGKILL)  # and whatever the call left running
            if status is None:
                status = worker.proc.wait()
            worker.salvage()
            died = (None, -status) if status < 0 else (status or None, None)
            others = f" (with {len(calls) - 1} other calls sent to it together)" \
                if len(calls) > 1 else ""
            error = f"the Python worker died during the call{others} (exit {status})"
        lines = []
        for i, (task, _) in enumerate(calls):
            if replies is None:
                assert died is not None
                code, sig = died
                done = done_message(task, code, sig, 0.0, None if (
                    task.timed_out or task.cancelled) else error)
            else:
                done = self.call_reply(task, replies[i])
            lines.append(_encode(done).encode() + b"\n")
        self.pump()
        self.report(lines)

    def call_reply(self, task: Task, reply: dict[str, Any]) -> dict[str, Any]:
        """The `done` of a call its worker answered."""
        code, error = (0, None) if reply.get("ok") else (
            1, str(reply.get("error") or "the call failed"))
        done = done_message(task, code, None, reply.get("cpu", 0.0), error)
        if isinstance(reply.get("wall"), (int, float)):
            done["wall"] = reply["wall"]  # not counting its wait behind others of a batch
        for name in ("result", "pickle", "traceback"):
            if name in reply:
                done[name] = reply[name]
        self.recycle(task)
        return done

    # ----------------------------------------------------------------- spares

    def adopt_spares(self) -> None:
        """Take over the spares an earlier agent on this workdir left behind."""
        root = os.path.join(self.workdir, SPARE_DIR)
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(root))[:SPARE_MAX]:
                inside = os.listdir(os.path.join(root, name))
                if len(inside) == 1:
                    self.spares.append((os.path.join(root, name), inside[0]))

    def recycle(self, task: Task) -> None:
        """Keep the directory of an attempt that left nothing, to reuse for another.

        Creating a directory and two log files is most of what an attempt costs the
        node when the task itself is short: inode allocation is slow on some file
        systems (ext4 skips recently deleted inodes). An attempt directory
        WORKDIR/JOB/TASK/ATTEMPT holding only empty stdout and stderr, in a TASK
        directory holding nothing else, is moved (TASK and all) under SPARE_DIR; `reuse`
        renames it into place for a new task. Its result reads the same: missing logs
        read as empty.
        """
        directory, root = task.dir, self.root
        if task.scratch or task.outputs or task.links or len(self.spares) >= SPARE_MAX or \
                not directory.startswith(root) or directory.count("/", len(root)) != 2:
            return  # (`resolve` normalised it: JOB/TASK/ATTEMPT, no "..")
        parent, _, leaf = directory.rpartition("/")
        try:
            names = os.listdir(directory)
            if len(names) != 2 or "stdout" not in names or "stderr" not in names \
                    or os.stat(directory + "/stdout").st_size \
                    or os.stat(directory + "/stderr").st_size or os.listdir(parent) != [leaf]:
                return
            spare = f"{root}{SPARE_DIR}/{os.getpid()}-{next(self.seq)}"
            try:
                os.rename(parent, spare)
            except FileNotFoundError:  # the first spare: make SPARE_DIR
                os.makedirs(root + SPARE_DIR, exist_ok=True)
                os.rename(parent, spare)
        except OSError:
            return
        with self.lock:
            self.spares.append((spare, leaf))

    def reuse(self, directory: str) -> bool:
        """Move a spare into place as `directory` (a new task's first attempt)."""
        parent, _, leaf = directory.rpartition("/")
        with self.lock:
            spares = self.spares
            if spares and spares[-1][1] == leaf:
                spare = spares.pop()[0]
            else:
                found = next((i for i, (_, name) in enumerate(spares) if name == leaf), None)
                if found is None:
                    return False
                spare = spares.pop(found)[0]
        try:
            if os.stat(f"{spare}/{leaf}/stdout").st_size or \
                    os.stat(f"{spare}/{leaf}/stderr").st_size:
                return False  # written to since (by a process that escaped): dropped
            try:
                os.rename(spare, parent)
            except FileNotFoundError:  # the job's directory does not exist yet
                os.makedirs(parent.rpartition("/")[0], exist_ok=True)
                os.rename(spare, parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # a later attempt: not for it
                with self.lock:
                    self.spares.append((spare, leaf))
            return False  # else gone (another agent on this workdir took it) or unusable
        return True

    def link(self, directory: str, name: str, target: str) -> None:
        path = os.path.join(directory, name)
        parent = os.path.dirname(path)
        if parent != directory:
            os.makedirs(parent, exist_ok=True)
        target = self.resolve(target)
        try:
            os.symlink(target, path)
        except FileExistsError:  # a retry in the same directory: replace the old link
            os.unlink(path)
            os.symlink(target, path)

    def kill(self, key: str) -> None:
        with self.lock:
            queued = [m for m in self.waiting if m.get("key") == key]
            for msg in queued:
                self.waiting.remove(msg)
            task = self.by_key.get(key)
        if queued:  # never started: report it cancelled at once
            self.send({"op": "done", "key": key, "exit": None, "signal": None,
                       "timed_out": False, "cancelled": True, "cpu": 0.0, "wall": 0.0,
                       "outputs": {}, "error": None})
            return
        with self.lock:
            if task is None or task.finished:
                return
            task.cancelled = True
            if task.term_sent:
                return
            task.term_sent = True
            killpg(task.pid, signal.SIGTERM)
        self.schedule(time.monotonic() + GRACE, _GRACE, task)

    def report(self, lines: list[bytes]) -> None:
        """Send `done` lines now, or hold them a moment to go out with the next ones.

        While more tasks wait here than there are slots, the controller's answer (new
        tasks for the freed slots) is not needed yet, so lines are held until the queue
        runs short or HOLD seconds pass: one write, one wake-up of the controller and
        one reply for several short tasks instead of one each.
        """
        with self.lock:
            self.held.extend(lines)
            if self.slots and len(self.waiting) > self.slots:
                if len(self.held) == len(lines):  # the first held line: a deadline
                    self.schedule(time.monotonic() + HOLD, _FLUSH, None)
                return
        self.flush_held()

    def flush_held(self) -> None:
        with self.lock:
            data = b"".join(self.held)
            self.held.clear()
        if data:
            self.write(data)

    # ------------------------------------------------------------------ reaper

    def reap_loop(self) -> None:
        """Wait for any child to exit; report exits in batches with one flush."""
        flags = os.WEXITED | os.WNOWAIT
        while True:
            with self.lock:
                while not self.by_pid:
                    self.children.wait()
            try:
                info = os.waitid(os.P_ALL, 0, flags)
            except ChildProcessError:
                time.sleep(0.01)  # a child is being registered; look again shortly
                continue
            lines: list[bytes] = []
            while info is not None:
                line = self.reap(info.si_pid)
                if line:
                    lines.append(line)
                try:
                    info = os.waitid(os.P_ALL, 0, flags | os.WNOHANG)
                except ChildProcessError:
                    info = None
            if lines:
                self.pump()
                self.report(lines)

    def reap(self, pid: int) -> bytes | None:
        """Reap one exited child (seen with WNOWAIT, so still a zombie); its done line."""
        with self.lock:
            while pid not in self.by_pid and self.spawning:
                self.children.wait()  # it may be the child being registered right now
            task = self.by_pid.pop(pid, None)
            if task is not None:
                task.finished = True  # from now on nobody signals this group
                self.active -= 1
                if self.by_key.get(task.key) is task:
                    del self.by_key[task.key]
        if task is None:  # not ours (a failed spawn): just collect it
            with contextlib.suppress(ChildProcessError):
                os.wait4(pid, os.WNOHANG)
            return None
        # The zombie leader still holds the group id: kill leftover background children.
        killpg(pid, signal.SIGKILL)
        try:
            _, status, usage = os.wait4(pid, 0)
            cpu = usage.ru_utime + usage.ru_stime
        except ChildProcessError:
            status, cpu = 0, 0.0
        code, sig = exit_status(status)
        if task.proc is not None:
            task.proc.returncode = code if code is not None else -(sig or 0)
            task.proc = None  # never waited on again
        line = _encode(done_message(task, code, sig, cpu, None)).encode() + b"\n"
        self.recycle(task)  # before `done` goes out: no later attempt of it can be here yet
        return line

    # ------------------------------------------------------------------- timer

    def schedule(self, when: float, kind: int, task: Task | None) -> None:
        with self.tcond:
            heap = self.heap
            if len(heap) >= self.compact_at:  # drop deadlines of finished tasks
                heap[:] = [e for e in heap if e[3] is None or not e[3].finished]
                heapq.heapify(heap)
                self.compact_at = max(1024, 2 * len(heap))
            entry = (when, next(self.seq), kind, task)
            heapq.heappush(heap, entry)
            if heap[0] is entry:
                self.tcond.notify()

    def timer_loop(self) -> None:
        heap = self.heap
        while True:
            with self.tcond:
                while True:
                    now = time.monotonic()
                    if heap and heap[0][0] <= now:
                        when, _, kind, task = heapq.heappop(heap)
                        break
                    self.tcond.wait(heap[0][0] - now if heap else None)
            if kind == _HB:
                try:
                    load = round(os.getloadavg()[0], 2)
                except (AttributeError, OSError):
                    load = 0.0
                self.send({"op": "hb", "t": round(time.time(), 3), "running": len(self.by_key),
                           "load": load})
                self.schedule(max(when + self.heartbeat, now), _HB, None)
            elif kind == _FLUSH:
                self.flush_held()
            elif task is not None and kind == _TIMEOUT:
                with self.lock:
                    if task.finished:
                        continue
                    task.timed_out = True
                    task.term_sent = True
                    killpg(task.pid, signal.SIGTERM)
                self.schedule(now + GRACE, _GRACE, task)
            elif task is not None and kind == _GRACE:
                with self.lock:
                    if not task.finished:
                        killpg(task.pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    # The channel gets a private descriptor; fd 1 becomes stderr so that a stray print
    # can never corrupt the message stream.
    chan = sys.stdout.fileno()
    try:
        chan = os.dup(chan)
        os.dup2(sys.stderr.fileno(), 1)
    except (OSError, ValueError):
        pass
    writer = open(chan, "wb", buffering=65536, closefd=False)  # noqa: SIM115
    usage = "usage: agent WORKDIR HEARTBEAT_SECONDS"
    if len(argv) != 2:
        writer.write(_encode({"op": "fatal", "error": usage}).encode() + b"\n")
        writer.flush()
        return 1
    workdir = os.path.abspath(os.path.expanduser(argv[0]))
    try:
        heartbeat = float(argv[1])
        os.makedirs(workdir, exist_ok=True)
    except (OSError, ValueError) as exc:
        writer.write(_encode({"op": "fatal", "error": f"{usage}: {exc}"}).encode()
                     + b"\n")
        writer.flush()
        return 1
    agent = Agent(workdir, heartbeat, sys.stdin.buffer, writer)
    agent.start()
    agent.serve()
    return 0


if __name__ in ("__main__", "__batchpool_agent__"):
    sys.exit(main(sys.argv[1:]))
