"""How the Executor turns a settled call into its future's result or exception."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import Future
from typing import Any

import cloudpickle
import pytest

from batchpool.executor import Executor, RemoteCallError, RemoteTraceback
from batchpool.scheduler import Outcome


def settle(state: str, outcome: Outcome, reply: dict[str, Any]) -> Future[Any]:
    executor = object.__new__(Executor)  # only the bookkeeping `settled` uses, no pool
    executor._lock = threading.Lock()
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()
    executor._futures, executor._payloads = {0: future}, {0: ""}
    executor.settled(0, state, outcome, reply)
    return future


def packed(value: object) -> str:
    return base64.b64encode(cloudpickle.dumps(value)).decode()


def test_a_result_and_a_raised_exception() -> None:
    assert settle("succeeded", Outcome(exit_code=0), {"pickle": packed(42)}).result() == 42
    raised = settle("failed", Outcome(exit_code=1, error="KeyError: 'k'"),
                    {"pickle": packed(KeyError("k")), "traceback": "Traceback ..."})
    with pytest.raises(KeyError) as info:
        raised.result()
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_a_call_that_returned_but_failed_afterwards_is_a_remote_call_error() -> None:
    # the function returned 42, then the controller failed the attempt (say, a copy)
    future = settle("failed", Outcome(exit_code=0, error="could not fetch outputs: gone"),
                    {"pickle": packed(42)})
    with pytest.raises(RemoteCallError, match="could not fetch outputs"):
        future.result()
