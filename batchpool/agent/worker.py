"""A warm Python worker on a node: runs Python calls one at a time, in-process.

Stdlib only, like the agent, which starts it as ``python3 -c <this source>`` and talks
to it over its stdin/stdout with one JSON line per request and per reply. The point is
the warm interpreter: modules imported by one call (numpy, the user's module) stay
imported for the next, so a small numeric task does not pay an interpreter start and
its imports every time.

A request names the attempt directory and either a ``target`` ("module:function") with
JSON ``args``/``kwargs``, or a ``pickle`` (base64 of a cloudpickled ``(fn, args,
kwargs)``, from the Executor API). During the call the working directory is the
attempt directory, the task's environment is applied, and file descriptors 1 and 2 go
to the attempt's ``stdout``/``stderr`` files. The reply says ``ok`` or gives the error
and traceback; a JSON call's return value is also written to ``result.json`` there.
A request ``{"batch": [request, ...]}`` runs its calls in order and has one reply,
``{"batch": [reply, ...]}``: the agent sends many short Executor calls that way.

A request with ``"scratch": true`` (the agent's Executor calls) runs in the worker's own
directory, WORKDIR/.workers/PID, instead: there fds 1 and 2 always point at the spool
files ``stdout`` and ``stderr``, emptied before each call and copied to the attempt
directory after it only when the call wrote something. Most calls print nothing, and
then nothing is created for them at all. The file ``current`` names the attempt
directory of the call running, so that the agent can save its output if the worker dies.

A call that hangs or must be cancelled is ended by killing this process: the agent
then starts a fresh worker for the next call.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import pickle
import resource
import sys
import time
import traceback
from typing import Any

RESULT_FILE = "result.json"
MAX_INLINE_RESULT = 1 << 16  # a JSON result this large or larger is sent as a file only


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _forget_stale_module(top: str, directory: str) -> None:
    """Drop an imported `top` whose file is not the one in `directory` (a new version)."""
    module = sys.modules.get(top)
    if module is None:
        return
    for candidate in (os.path.join(directory, top + ".py"),
                      os.path.join(directory, top, "__init__.py")):
        if os.path.exists(candidate):
            loaded = getattr(module, "__file__", None)
            if loaded is None or os.path.realpath(loaded) != os.path.realpath(candidate):
                for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
                    del sys.modules[name]
            return


def resolve(target: str, directory: str) -> Any:
    """The function named by "module:function", the module found first in `directory`."""
    module_name, _, attr = target.partition(":")
    _forget_stale_module(module_name.split(".")[0], directory)
    sys.path.insert(0, directory)
    try:
        obj: Any = importlib.import_module(module_name)
    finally:
        sys.path.remove(directory)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj


_HOME = os.path.join(os.getcwd(), ".workers", str(os.getpid()))  # this worker's directory
_BEFORE: dict[str, str | None] = {}  # each variable a call set: its value before any call
_SET: dict[str, str] = {}  # what the calls set them to, as now in os.environ


def _apply_env(env: dict[str, str]) -> None:
    """Give a call its environment, changing only what differs from the last call's.

    Successive calls set the same names (BATCHPOOL_TASK_ID, ...), mostly to the same
    values; setting and restoring each one per call cost more than a no-op call.
    """
    for name in [n for n in _SET if n not in env]:  # the last call's, not this one's
        before = _BEFORE.pop(name)
        del _SET[name]
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before
    for name, value in env.items():
        if _SET.get(name) != value:
            if name not in _BEFORE:
                _BEFORE[name] = os.environ.get(name)
            os.environ[name] = _SET[name] = value


class _Redirected:
    """fds 1 and 2 to the attempt's files, the environment and cwd set, for one call."""

    def __init__(self, directory: str, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.saved_fds: list[int] = []

    def __enter__(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.chdir(self.directory)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for fd, name in ((1, "stdout"), (2, "stderr")):
            self.saved_fds.append(os.dup(fd))
            target = os.open(os.path.join(self.directory, name), flags, 0o666)
            os.dup2(target, fd)
            os.close(target)
        _apply_env(self.env)

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in enumerate(self.saved_fds, start=1):  # fds 1 and 2
            os.dup2(saved, fd)
            os.close(saved)
        os.chdir(_HOME)


class _Spool:
    """Output of scratch calls: fds 1 and 2 on files in the worker's directory."""

    def __init__(self) -> None:
        os.makedirs(_HOME, exist_ok=True)
        os.chdir(_HOME)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(name, flags, 0o666)
            os.dup2(target, fd)
            os.close(target)
        self.current = os.open("current", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)

    def begin(self, directory: str, env: dict[str, str]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.ftruncate(1, 0)
        os.ftruncate(2, 0)
        os.pwrite(self.current, os.fsencode(directory), 0)
        _apply_env(env)

    def end(self, directory: str) -> None:
        """Copy what the call wrote (if anything) into its attempt directory."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.ftruncate(self.current, 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            size = os.fstat(fd).st_size
            if size:
                os.makedirs(directory, exist_ok=True)
                with open(os.path.join(directory, name), "wb") as out:
                    for offset in range(0, size, 1 << 20):
                        out.write(os.pread(fd, min(1 << 20, size - offset), offset))


_SPOOL: _Spool | None = None  # made by main()


def _dumps(value: Any) -> bytes:
    try:
        import cloudpickle
        return bytes(cloudpickle.dumps(value))
    except ImportError:
        return pickle.dumps(value)


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Run one call; the reply (never raises for the call's own errors)."""
    directory = request["dir"]
    started, wall = _cpu(), time.monotonic()
    reply: dict[str, Any] = {"ok": True}
    scratch = bool(request.get("scratch")) and _SPOOL is not None
    if scratch:
        assert _SPOOL is not None
        _SPOOL.begin(directory, request.get("env") or {})
        context: Any = contextlib.nullcontext()
    else:
        context = _Redirected(directory, request.get("env") or {})
    with context:
        try:
            if "pickle" in request:
                fn, args, kwargs = pickle.loads(base64.b64decode(request["pickle"]))
            else:
                fn = resolve(request["target"], directory)
                args, kwargs = request.get("args") or [], request.get("kwargs") or {}
            value = fn(*args, **kwargs)
            if "pickle" in request:
                reply["pickle"] = base64.b64encode(_dumps(value)).decode()
            else:
                text = json.dumps(value, allow_nan=False)
                with open(RESULT_FILE, "w") as handle_:
                    handle_.write(text + "\n")
                if len(text) < MAX_INLINE_RESULT:
                    reply["result"] = text
        except (Exception, SystemExit) as exc:  # the call's failure is the task's, not ours
            text = traceback.format_exc()
            sys.stderr.write(text)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": text}
            if "pickle" in request:
                # an exception that does not pickle: the text suffices
                with contextlib.suppress(Exception):
                    reply["pickle"] = base64.b64encode(_dumps(exc)).decode()
    if scratch:
        assert _SPOOL is not None
        _SPOOL.end(directory)
    reply["cpu"] = round(_cpu() - started, 6)
    reply["wall"] = round(time.monotonic() - wall, 6)
    return reply


def main() -> None:
    global _SPOOL
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    _SPOOL = _Spool()  # fds 1 and 2 now go to its files: a stray print cannot hit replies
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply = {"batch": [handle(r) for r in request["batch"]]} if "batch" in request \
            else handle(request)
        channel.write(json.dumps(reply, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
