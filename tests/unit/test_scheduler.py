"""The pure scheduler, driven with a fake clock and no I/O."""

from __future__ import annotations

from typing import Any

from batchpool.scheduler import (
    DEPENDENCY_FAILED,
    Finish,
    GroupProgress,
    JobDone,
    Kill,
    Outcome,
    RetryPolicy,
    Scheduler,
    Settle,
    SettleRest,
    Start,
)
from batchpool.spec import JobSpec

OK = Outcome(exit_code=0)
FAIL = Outcome(exit_code=1)


def spec(*tasks: dict[str, Any], **job: Any) -> JobSpec:
    groups = []
    for task in tasks:
        group = {"command": "true", "max_attempts": 1, **task}
        groups.append(group)
    return JobSpec.model_validate({"name": "t", "base_dir": "/", "tasks": groups, **job})


def starts(effects: list[Any]) -> list[Start]:
    return [e for e in effects if isinstance(e, Start)]


def of(effects: list[Any], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def make(slots: int = 2, **policy: float) -> Scheduler:
    s = Scheduler(RetryPolicy(**policy) if policy else RetryPolicy(base=1.0, cap=8.0))
    s.add_node("n1", slots)
    return s


def test_fills_free_slots_in_position_order() -> None:
    s = make(slots=3)
    s.add_job(1, spec({"id": "a", "array": "0-9"}), now=0)
    placed = starts(s.schedule(0))
    assert [p.task_id for p in placed] == ["a[0]", "a[1]", "a[2]"]
    assert all(p.first and p.attempt == 1 for p in placed)
    assert starts(s.schedule(0)) == []  # no free slot left


def test_result_frees_a_slot_and_job_finishes() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "array": "0-1"}), now=0)
    first = starts(s.schedule(0))[0]
    effects = s.finished(first.key, OK, now=1)
    assert of(effects, Finish)[0].final == "succeeded"
    second = starts(s.schedule(1))[0]
    assert second.task_id == "a[1]"
    done = of(s.finished(second.key, OK, now=2), JobDone)
    assert done == [JobDone(1, "succeeded", None)]


def test_priority_then_submit_order() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "low"}, priority=0), now=0)
    s.add_job(2, spec({"id": "high"}, priority=10), now=0)
    s.add_job(3, spec({"id": "high2"}, priority=10), now=0)
    order = []
    for t in range(3):
        start = starts(s.schedule(t))[0]
        order.append(start.task_id)
        s.finished(start.key, OK, now=t)
    assert order == ["high", "high2", "low"]


def test_array_concurrency_limit() -> None:
    s = make(slots=8)
    s.add_job(1, spec({"id": "a", "array": "0-99%3"}), now=0)
    placed = starts(s.schedule(0))
    assert len(placed) == 3
    s.finished(placed[0].key, OK, now=1)
    assert len(starts(s.schedule(1))) == 1


def test_dependencies_wait_for_every_member() -> None:
    s = make(slots=4)
    s.add_job(1, spec({"id": "map", "array": "0-1"}, {"id": "reduce", "depends_on": ["map"]}),
              now=0)
    placed = starts(s.schedule(0))
    assert [p.group_id for p in placed] == ["map", "map"]
    s.finished(placed[0].key, OK, now=1)
    assert starts(s.schedule(1)) == []
    s.finished(placed[1].key, OK, now=1)
    assert [p.task_id for p in starts(s.schedule(1))] == ["reduce"]


def test_failed_dependency_fails_dependants_transitively() -> None:
    s = make(slots=4)
    job = spec({"id": "map", "array": "0-2"}, {"id": "combine", "depends_on": ["map"]},
               {"id": "reduce", "depends_on": ["combine"]})
    s.add_job(1, job, now=0)
    placed = starts(s.schedule(0))
    effects = s.finished(placed[0].key, FAIL, now=1)
    settled = of(effects, SettleRest)
    assert {(e.group_id, e.state, e.reason) for e in settled} == {
        ("combine", "failed", DEPENDENCY_FAILED), ("reduce", "failed", DEPENDENCY_FAILED)}
    s.finished(placed[1].key, OK, now=2)
    done = of(s.finished(placed[2].key, OK, now=2), JobDone)
    assert done[0].state == "failed" and "3 task(s) failed" in (done[0].reason or "")


def test_retry_with_backoff_then_success() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "max_attempts": 3}), now=0)
    first = starts(s.schedule(0))[0]
    finish = of(s.finished(first.key, FAIL, now=10), Finish)[0]
    assert finish.final is None and finish.retry_at == 11  # base 1s
    assert starts(s.schedule(10.5)) == []
    assert s.next_wakeup() == 11
    second = starts(s.schedule(11))[0]
    assert second.attempt == 2 and not second.first
    finish = of(s.finished(second.key, FAIL, now=20), Finish)[0]
    assert finish.retry_at == 22  # doubled
    third = starts(s.schedule(22))[0]
    assert third.attempt == 3
    final = of(s.finished(third.key, FAIL, now=30), Finish)[0]
    assert final.final == "failed" and final.reason == "exit 1 after 3 attempts"


def test_retry_exit_codes_limit_what_is_retried() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "max_attempts": 5, "retry_exit_codes": [75]}), now=0)
    first = starts(s.schedule(0))[0]
    assert of(s.finished(first.key, Outcome(exit_code=75), now=1), Finish)[0].final is None
    second = starts(s.schedule(5))[0]
    finish = of(s.finished(second.key, Outcome(exit_code=3), now=6), Finish)[0]
    assert finish.final == "failed"


def test_timeout_is_retried_only_without_exit_code_rules() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "max_attempts": 2}), now=0)
    first = starts(s.schedule(0))[0]
    finish = of(s.finished(first.key, Outcome(timed_out=True, signal=9), now=1), Finish)[0]
    assert finish.final is None and finish.attempt_state == "timed_out"


def test_lost_attempts_do_not_count() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "max_attempts": 1}), now=0)
    first = starts(s.schedule(0))[0]
    lost = of(s.remove_node("n1", now=1), Finish)[0]
    assert lost.attempt_state == "lost" and not lost.counted and lost.final is None
    s.add_node("n2", 1)
    again = starts(s.schedule(1))[0]
    assert again.node == "n2" and again.attempt == 2
    assert of(s.finished(first.key, OK, now=2), Finish) == []  # late result ignored
    assert of(s.finished(again.key, OK, now=2), Finish)[0].final == "succeeded"


def test_cancel_kills_running_and_settles_queued() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "array": "0-4"}), now=0)
    running = starts(s.schedule(0))[0]
    effects = s.cancel_job(1)
    assert of(effects, Kill) == [Kill(running.key, "n1")]
    assert of(effects, SettleRest)[0].count == 4
    assert starts(s.schedule(1)) == []
    done = of(s.finished(running.key, Outcome(cancelled=True, signal=15), now=1), JobDone)
    assert done == [JobDone(1, "cancelled", "cancelled by user")]


def test_on_task_failure_cancel() -> None:
    s = make(slots=2)
    s.add_job(1, spec({"id": "a", "array": "0-9"}, on_task_failure="cancel"), now=0)
    a, b = starts(s.schedule(0))
    effects = s.finished(a.key, FAIL, now=1)
    assert of(effects, Kill) == [Kill(b.key, "n1")]
    done = of(s.finished(b.key, Outcome(cancelled=True), now=1), JobDone)
    assert done[0].state == "failed" and "task a[0] failed" in (done[0].reason or "")


def test_job_timeout_fails_the_job() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "array": "0-3"}, timeout=60), now=0)
    running = starts(s.schedule(0))[0]
    assert s.next_wakeup() == 60
    assert s.expire(59) == []
    effects = s.expire(60)
    assert of(effects, Kill)
    done = of(s.finished(running.key, Outcome(cancelled=True), now=61), JobDone)
    assert done == [JobDone(1, "failed", "job timed out")]


def test_million_member_array_costs_no_per_task_state() -> None:
    s = make(slots=2)
    s.add_job(1, spec({"id": "big", "array": "0-999999"}), now=0)
    placed = starts(s.schedule(0))
    assert [p.task_id for p in placed] == ["big[0]", "big[1]"]
    group = s._jobs[1].groups["big"]
    assert group.cursor == 2 and len(group.tries) == 2


def test_resume_skips_finished_and_retries_orphans() -> None:
    s = make(slots=4)
    progress = [GroupProgress("a", dispatched=3, succeeded=2,
                              unfinished=((2, 0, 0, True),))]
    effects = s.add_job(1, spec({"id": "a", "array": "0-4", "max_attempts": 1}), now=5,
                        progress=progress)
    lost = of(effects, Finish)[0]
    assert (lost.task_id, lost.attempt, lost.attempt_state) == ("a[2]", 1, "lost")
    placed = starts(s.schedule(5))
    assert [(p.task_id, p.attempt) for p in placed] == [("a[2]", 2), ("a[3]", 1), ("a[4]", 1)]


def test_resume_of_settled_dependency_failure() -> None:
    s = make(slots=1)
    progress = [GroupProgress("map", dispatched=1, failed=1),
                GroupProgress("reduce", rest_state="failed")]
    effects = s.add_job(1, spec({"id": "map"}, {"id": "reduce", "depends_on": ["map"]}),
                        now=0, progress=progress)
    assert of(effects, JobDone)[0].state == "failed"


def test_settle_of_retry_queued_task_on_cancel() -> None:
    s = make(slots=1)
    s.add_job(1, spec({"id": "a", "max_attempts": 3}), now=0)
    first = starts(s.schedule(0))[0]
    s.finished(first.key, FAIL, now=1)
    effects = s.cancel_job(1)
    assert of(effects, Settle) == [Settle(1, "a", "cancelled", "cancelled by user")]
    assert of(effects, JobDone)[0].state == "cancelled"


def test_spreads_over_nodes_with_most_free_slots() -> None:
    s = Scheduler()
    s.add_node("n1", 2)
    s.add_node("n2", 2)
    s.add_job(1, spec({"id": "a", "array": "0-3"}), now=0)
    nodes = sorted(p.node for p in starts(s.schedule(0)))
    assert nodes == ["n1", "n1", "n2", "n2"]


# -- on_every_node: members pinned to nodes ----------------------------------------------


def broadcast(nodes: tuple[str, ...], **task: Any) -> JobSpec:
    return spec({"id": "b", "on_every_node": list(nodes), **task},
                {"id": "r", "depends_on": ["b"]})


def test_pinned_members_run_each_on_its_own_node() -> None:
    s = make(slots=4)
    s.add_node("n2", 4)
    s.add_job(1, broadcast(("n1", "n2")), now=0)
    placed = starts(s.schedule(0))
    assert [(p.task_id, p.node) for p in placed] == [("b[0]", "n1"), ("b[1]", "n2")]
    for p in placed:
        s.finished(p.key, OK, now=1)
    assert [p.task_id for p in starts(s.schedule(1))] == ["r"]


def test_pinned_member_waits_for_its_node_to_come_up() -> None:
    s = make(slots=4)
    s.add_job(1, broadcast(("n1", "late")), now=0)
    assert [p.node for p in starts(s.schedule(0))] == ["n1"]
    assert starts(s.schedule(1)) == []  # "late" is not up: its member waits, not elsewhere
    s.add_node("late", 1)
    assert [(p.task_id, p.node) for p in starts(s.schedule(2))] == [("b[1]", "late")]


def test_pinned_member_of_a_node_that_never_came_fails_and_the_job_ends() -> None:
    s = make(slots=4)
    s.add_job(1, broadcast(("n1", "dead")), now=0)
    first = starts(s.schedule(0))[0]
    s.remove_node("dead", now=1, reason="unusable: no python3")
    effects = s.schedule(1)
    settled = of(effects, Settle)
    assert settled == [Settle(1, "b[1]", "failed", "node dead is gone: unusable: no python3",
                              ("b", 1))]
    assert of(effects, SettleRest)[0].reason == DEPENDENCY_FAILED  # the reduce
    done = of(s.finished(first.key, OK, now=2), JobDone)
    assert done[0].state == "failed"


def test_pinned_attempt_on_a_lost_node_fails_instead_of_moving() -> None:
    s = make(slots=4)
    s.add_node("n2", 4)
    s.add_job(1, broadcast(("n1", "n2"), max_attempts=3), now=0)
    placed = starts(s.schedule(0))
    lost = of(s.remove_node("n2", now=1, reason="no heartbeat"), Finish)[0]
    assert lost.attempt_state == "failed" and lost.final is None  # retried, but only on n2
    effects = s.schedule(5)
    assert starts(effects) == []
    assert of(effects, Settle)[0].task_id == "b[1]"
    assert of(s.finished(placed[0].key, OK, now=6), JobDone)[0].state == "failed"


def test_prefetch_depth_keeps_each_slot_busy_for_the_lookahead() -> None:
    from batchpool import defaults
    from batchpool.controller import prefetch_depth

    assert prefetch_depth(1.0) == 1                       # long tasks: never sent ahead
    assert prefetch_depth(defaults.PREFETCH_AHEAD) == 2   # one running, one waiting
    assert prefetch_depth(defaults.PREFETCH_AHEAD / 4) == 5
    assert prefetch_depth(0.0001) == defaults.PREFETCH_MAX
    assert prefetch_depth(0.0) == defaults.PREFETCH_MAX
