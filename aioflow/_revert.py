"""Reverting, and the retries of flow parts that revert and run again.

A *revert group* is a set of atoms to undo: an atom is reverted once every successor in
the group has been, so dependents go before their dependencies and independent branches
revert concurrently. The whole flow is one group when it fails; a *retry scope* (a flow
with ``retry=``, or what follows a ``Checkpoint(retry=...)``) is a group of its own when
one of its atoms fails and its retry has attempts left: it is reverted, reset to PENDING
and started again from its controller, while atoms outside it go on.

Which scope takes a failure: the innermost one with attempts left whose retry matches the
error; an exhausted scope passes the failure outwards, unless its retry says
``revert_all``, which fails the whole flow at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._compile import BARRIER, RETRY, ExecGraph, Node
from ._errors import DeadlineExceededError, FlowCancelledError
from ._failure import CANCEL, Failure
from ._instruments import Hooks
from ._states import AtomState, FlowStatus
from .instrument import Attempt, FlowRun

if TYPE_CHECKING:
    import structlog
    from anyio.abc import TaskGroup

    from ._timers import Timer, Timers
    from .journal import Journal

_S = AtomState
TO_REVERT = (_S.SUCCESS, _S.FAILURE, _S.RETRYING, _S.REVERTING)
FINISHED = (_S.SUCCESS, _S.IGNORED)
NO_INJECTIONS: dict[str, Any] = {}


class _Group:
    __slots__ = ("done", "remaining")

    def __init__(self, remaining: int, done: Callable[[], None] | None) -> None:
        self.remaining = remaining
        self.done = done


class Reverting:
    """The reverting half of :class:`aioflow._run.Run` (a mixin over its state)."""

    graph: ExecGraph
    nodes: list[Node]
    states: list[AtomState]
    attempts: list[int]
    results: list[Any]
    values: list[Any]
    indegree: list[int]
    failures: dict[str, Failure]
    first_error: BaseException | None
    first_error_at: int | None
    status: FlowStatus
    failing: bool
    stopped_at: str | None
    retry_pending: list[int]
    again_now: set[int]
    cancel_failure: Failure | None
    reverting: bool
    revert_failed: bool
    cancelled: bool
    running: int
    tg: TaskGroup | None
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    timers: Timers
    cancels: dict[int, anyio.CancelScope]
    log: structlog.typing.FilteringBoundLogger
    journal: Journal
    strict: bool
    hooks: Hooks | None
    flow_run: FlowRun | None

    def init_reverting(self) -> None:
        n = len(self.nodes)
        self.revert_target = [False] * n
        self.revert_count = [0] * n
        self.group: list[_Group | None] = [None] * n
        k = len(self.graph.scopes)
        self.scope_failing = [False] * k
        self.scope_reverting = [False] * k
        self.scope_running = [0] * k
        # Part deadlines: scope -> (attempt, deadline) as journaled, and its timer.
        self.part_deadlines: dict[int, tuple[int, float]] = {}
        self.part_timers: dict[int, Timer] = {}

    # Decided by the scheduler ------------------------------------------------------------

    def set_flow(self, status: FlowStatus, details: Any = None) -> int:
        raise NotImplementedError

    def set_atom(self, i: int, state: AtomState, details: Any = None) -> int:
        raise NotImplementedError

    def ready(self, i: int) -> bool:
        raise NotImplementedError

    def release(self, i: int) -> None:
        raise NotImplementedError

    def spawn(self) -> None:
        raise NotImplementedError

    def arguments(self, node: Node) -> dict[str, Any]:
        raise NotImplementedError

    def injections(self, i: int, attempt: int) -> dict[str, Any]:
        raise NotImplementedError

    def abandon_waits(self, indices: list[int] | None = None) -> None:
        raise NotImplementedError

    def idle_waits(self) -> None:
        raise NotImplementedError

    # Part deadlines -----------------------------------------------------------------------

    def set_part_deadline(self, s: int, attempt: int, deadline: float) -> None:
        """Bound attempt ``attempt`` of part ``s`` by ``deadline`` (journaled by the caller,
        on its controller's RUNNING event); the timer starts with the run."""
        self.part_deadlines[s] = (attempt, deadline)
        if self.tg is not None:
            self.arm_part(s)

    def arm_part(self, s: int) -> None:
        attempt, deadline = self.part_deadlines[s]
        old = self.part_timers.pop(s, None)
        if old is not None:
            old.cancel()
        self.part_timers[s] = self.timers.add(deadline, self.part_expired, s, attempt)

    def arm_parts(self) -> None:
        """Start the timers of the part deadlines restored from the journal; a deadline
        already past fails its part now (a run resumed, or woken, at that deadline must
        not rest again first)."""
        now = self.clock()
        for s, (attempt, deadline) in list(self.part_deadlines.items()):
            if deadline <= now:
                self.part_expired(s, attempt)
            else:
                self.arm_part(s)

    def disarm_parts(self) -> None:
        for timer in self.part_timers.values():
            timer.cancel()
        self.part_timers.clear()

    def part_done(self, s: int) -> bool:
        scope = self.graph.scopes[s]
        return all(self.states[i] in FINISHED for i in scope.nodes)

    def part_expired(self, s: int, attempt: int) -> None:
        """Part ``s`` passed its deadline: cancel its running atoms and fail it with
        DeadlineExceededError; its retry, or the part around it, or the flow's revert
        takes that failure as any other."""
        self.part_timers.pop(s, None)
        scope = self.graph.scopes[s]
        c = scope.controller
        if (
            self.part_deadlines.get(s, (None, 0.0))[0] != attempt
            or self.attempts[c] != attempt
            or self.states[c] is not _S.SUCCESS
            or self.failing
            or self.scope_failing[s]
            or self.cancelled
            or self.part_done(s)
        ):
            return
        deadline = self.part_deadlines[s][1]
        exc = DeadlineExceededError(
            f"part {scope.name!r} of flow {self.graph.name!r} passed its deadline"
            f" ({scope.timeout} s after it started, at {deadline})"
        )
        failure = Failure.from_exception(exc)
        self.failures.setdefault(scope.name, failure)
        # Journaled on the part's controller (a success so far), which is reverted next
        # whatever takes the failure: a resume, or an outcome read from the journal,
        # knows why the part failed.
        self.set_atom(c, _S.REVERTING, {"failure": failure.to_dict()})
        self.results[c] = failure
        if self.first_error is None:
            self.first_error, self.first_error_at = exc, c
        retry = scope.retry
        if retry is not None and retry.should_retry(self.attempts[c], failure):
            target: int | None = s
        else:
            target = self.retry_scope_for(self.nodes[c], failure)
        if target is None:
            self.failing = True
        elif not self.scope_failing[target]:
            self.scope_failing[target] = True
        for i in scope.nodes:
            cancel = self.cancels.get(i)
            if cancel is not None:
                cancel.cancel()
        if target is not None:
            self.check_scope(target)
        self.check_idle()

    # Failing ----------------------------------------------------------------------------

    def cancel_flow(self, failure: Failure) -> None:
        """Revert the whole flow because ``engine.cancel`` asked: journaled first (the
        REVERTING event carries the failure), so a crash from here on resumes reverting."""
        self.cancel_failure = failure
        self.failures[CANCEL] = failure
        if self.first_error is None:
            self.first_error = failure.exception or FlowCancelledError(failure.message)
        self.failing = True
        self.retry_pending.clear()  # nothing runs again: what failed is reverted
        self.again_now.clear()
        self.set_flow(FlowStatus.REVERTING, {"cancel": failure.to_dict()})

    def fail(self, node: Node, failure: Failure, exc: BaseException | None) -> None:
        """Atom ``node`` failed for good: retry the part around it, or suspend the flow
        (``Retry.times(then="suspend")``), or fail it."""
        self.failures.setdefault(node.name, failure)
        self.results[node.index] = failure
        own = node.task.retry if node.task is not None else None
        scope = None if own is not None and own.suspends(failure) else (
            self.retry_scope_for(node, failure)
        )
        if scope is None and self.suspends(node, failure):
            # Nothing more starts; what runs finishes; the flow rests SUSPENDED.
            self.stopped_at = self.stopped_at or node.name
            return
        if self.first_error is None and exc is not None:
            self.first_error = exc
            self.first_error_at = node.index
        if scope is None:
            self.failing = True
        elif not self.scope_failing[scope]:
            self.scope_failing[scope] = True
            self.check_scope(scope)

    def suspends(self, node: Node, failure: Failure) -> bool:
        """True when ``failure`` of ``node``, retried by no policy any more, suspends the
        flow: the task's own retry, or the innermost part's retry that takes the failure,
        says ``then="suspend"``."""
        if self.failing:
            return False
        own = node.task.retry if node.task is not None else None
        if own is not None and own.suspends(failure):
            return True
        for s in reversed(node.scopes):
            retry = self.graph.scopes[s].retry
            if retry is not None and retry.values is None and failure.matches(*retry.on):
                return retry.suspends(failure)
        return False

    def retry_scope_for(self, node: Node, failure: Failure) -> int | None:
        for s in reversed(node.scopes):
            if self.scope_failing[s]:
                return s
            retry = self.graph.scopes[s].retry
            if retry is None:
                continue  # a part with only a deadline: the part around it decides
            if retry.should_retry(self.attempts[self.graph.scopes[s].controller], failure):
                return s
            if retry.revert_all:
                return None
        return None

    def check_scope(self, s: int) -> None:
        if (
            self.scope_failing[s]
            and not self.scope_reverting[s]
            and self.scope_running[s] == 0
            and not self.cancelled
            and self.tg is not None
        ):
            self.scope_reverting[s] = True
            if self.failing:
                return  # the whole flow reverts; this part with it
            scope = self.graph.scopes[s]
            members = [scope.controller, *scope.nodes]
            self.abandon_waits(members)
            targets = [i for i in members if self.states[i] in TO_REVERT]
            self.revert_group(targets, lambda: self.restart_scope(s))

    def check_idle(self) -> None:
        if self.running == 0 and self.failing and not self.reverting and not self.cancelled:
            self.start_revert()
        self.idle_waits()

    def restart_scope(self, s: int) -> None:
        """Reset a reverted scope to PENDING and start its next attempt (after backoff)."""
        if self.failing or self.revert_failed or self.cancelled:
            return
        scope = self.graph.scopes[s]
        self.reset([scope.controller, *scope.nodes], keep_attempts=scope.controller)
        self.scope_failing[s] = self.scope_reverting[s] = False
        assert scope.retry is not None  # only a scope with a retry is restarted
        delay = scope.retry.delay(self.attempts[scope.controller])
        self.running += 1
        assert self.tg is not None
        self.tg.start_soon(self.next_attempt, scope.controller, delay, name=f"retry {scope.name}")

    def reset(self, indices: list[int], keep_attempts: int | None = None) -> None:
        """Put nodes back to PENDING to run again: their results, failures, attempt counts
        (but that of ``keep_attempts``) and the retry scopes they control are forgotten,
        and their in-degrees recounted."""
        for i in indices:
            node = self.nodes[i]
            if node.kind == BARRIER:
                self.states[i] = _S.PENDING
            elif self.states[i] is not _S.PENDING:
                self.set_atom(i, _S.PENDING)
            self.failures.pop(node.name, None)
            self.results[i] = self.values[i] = None
            if i != keep_attempts:
                self.attempts[i] = 0
            if node.controls is not None:
                self.scope_failing[node.controls] = self.scope_reverting[node.controls] = False
            if self.first_error_at == i:
                self.first_error = self.first_error_at = None
        for i in indices:
            self.indegree[i] = sum(1 for p in self.nodes[i].preds if self.states[p] not in FINISHED)

    async def next_attempt(self, controller: int, delay: float) -> None:
        try:
            if delay > 0:
                await self.sleep(delay)
            if not self.failing and self.ready(controller):
                self.release(controller)
            self.spawn()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.running -= 1
            self.check_idle()

    def start_retry(self, i: int) -> bool:
        """Run a retry controller: it starts its flow's next attempt and publishes, with
        ``Retry.for_each``, that attempt's value."""
        node = self.nodes[i]
        assert node.kind == RETRY and node.controls is not None
        scope = self.graph.scopes[node.controls]
        retry = scope.retry
        self.attempts[i] += 1
        if scope.timeout is None:
            self.set_atom(i, _S.RUNNING)
        else:
            deadline = self.clock() + scope.timeout
            self.set_atom(i, _S.RUNNING, {"deadline": deadline})
            self.set_part_deadline(node.controls, self.attempts[i], deadline)
        attempt = self.attempts[i]
        value = attempt if retry is None or retry.values is None else retry.values[attempt - 1]
        self.set_atom(i, _S.SUCCESS, {"result": value})
        self.results[i] = self.values[i] = value
        return True

    # Reverting --------------------------------------------------------------------------

    def start_revert(self) -> None:
        """Revert every atom that ran, dependents first, independent branches at once."""
        self.reverting = True
        if self.status is not FlowStatus.REVERTING:
            self.set_flow(FlowStatus.REVERTING)
        if not self.revert_failed:
            self.abandon_waits()
            self.revert_group([i for i, s in enumerate(self.states) if s in TO_REVERT], None)

    def revert_group(self, targets: list[int], done: Callable[[], None] | None) -> None:
        group = _Group(len(targets), done)
        for i in targets:
            self.revert_target[i] = True
            self.group[i] = group
        for i in targets:
            self.revert_count[i] = sum(1 for s in self.nodes[i].succs if self.revert_target[s])
        if not targets:
            if done is not None:
                done()
            return
        for i in reversed(targets):
            if self.revert_count[i] == 0:
                self.revert_node(i)

    def revert_node(self, i: int) -> None:
        stack = [i]
        while stack:
            j = stack.pop()
            if self.nodes[j].kind == BARRIER:
                self.states[j] = _S.REVERTED
                stack.extend(self.reverted(j))
            else:
                self.running += 1
                assert self.tg is not None
                self.tg.start_soon(self.revert_atom, j, name=f"revert {self.nodes[j].name}")

    def reverted(self, i: int) -> list[int]:
        """Count ``i`` as reverted; return the predecessors now free to revert."""
        self.revert_target[i] = False
        ready = []
        for p in self.nodes[i].preds:
            if self.revert_target[p]:
                self.revert_count[p] -= 1
                if self.revert_count[p] == 0:
                    ready.append(p)
        group = self.group[i]
        self.group[i] = None
        if group is not None:
            group.remaining -= 1
            if group.remaining == 0 and group.done is not None:
                group.done()
        return ready

    async def revert_atom(self, i: int) -> None:
        node = self.nodes[i]
        hooks = self.hooks if node.task is not None else None
        entered: list[Any] = []
        info: Attempt | None = None
        try:
            self.set_atom(i, _S.REVERTING)
            if node.task is not None:
                injections = (
                    self.injections(i, self.attempts[i]) if node.task._injects else NO_INJECTIONS
                )
                if hooks is not None and self.flow_run is not None:
                    info = Attempt(self.flow_run, node.name, self.attempts[i], "revert")
                    entered = hooks.enter(info)
                await node.task._call_revert(
                    self.arguments(node), self.results[i], dict(self.failures), injections
                )
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            if info is not None:
                info.state = _S.REVERTING
                Hooks.exit(entered, None)
            raise
        except Exception as exc:
            if info is not None:
                info.state, info.error = _S.REVERT_FAILURE, exc
                Hooks.exit(entered, exc)
            failure = Failure.from_exception(exc)
            self.set_atom(i, _S.REVERT_FAILURE, {"failure": failure.to_dict()})
            self.failures.setdefault(node.name, failure)
            self.revert_failed = self.failing = True
            self.log.warning("aioflow.revert_failed", atom=node.name, error=str(failure))
            return
        finally:
            self.running -= 1
            self.check_idle()
        if info is not None:
            info.state = _S.REVERTED
            Hooks.exit(entered, None)
        ticket = self.set_atom(i, _S.REVERTED)
        if self.strict and node.preds and self.journal.durable < ticket:
            # A dependency is undone only once its dependent's undo is committed, so that
            # after a crash the dependent's revert never runs again above an undone base.
            try:
                await self.journal.wait_durable(ticket)
            except anyio.get_cancelled_exc_class():
                self.cancelled = True
                raise
        if not self.revert_failed:
            for p in self.reverted(i):
                self.revert_node(p)
