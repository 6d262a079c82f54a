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

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._compile import BARRIER, RETRY, Node
from .._errors import DeadlineExceededError, FlowCancelledError
from .._failure import CANCEL, Failure
from .._instruments import Hooks
from .._states import Atoms, FlowStatus
from ..instrument import Attempt

if TYPE_CHECKING:
    from .._timers import Timer
    from .run import Run

_S = Atoms
TO_REVERT = (_S.SUCCESS, _S.FAILURE, _S.RETRYING, _S.REVERTING)
FINISHED = (_S.SUCCESS, _S.IGNORED)
NO_INJECTIONS: dict[str, Any] = {}


class _Group:
    __slots__ = ("done", "remaining")

    def __init__(self, remaining: int, done: Callable[[], None] | None) -> None:
        self.remaining = remaining
        self.done = done


class Reverter:
    """Failing and reverting: which part a failure reverts (a retry scope, or the whole
    flow), revert groups undone dependents first, the retries of parts, and the
    deadlines of parts. One per :class:`~aioflow._kernel.run.Run`, as ``run.reverter``."""

    def __init__(self, run: Run) -> None:
        self.run = run
        n = len(self.run.nodes)
        self.revert_target = [False] * n
        self.revert_count = [0] * n
        self.group: list[_Group | None] = [None] * n
        k = len(self.run.graph.scopes)
        self.scope_failing = [False] * k
        self.scope_reverting = [False] * k
        self.scope_running = [0] * k
        # Part deadlines: scope -> (attempt, deadline) as journaled, and its timer.
        self.part_deadlines: dict[int, tuple[int, float]] = {}
        self.part_timers: dict[int, Timer] = {}

    def grow(self, n: int, scopes: int = 0) -> None:
        """Room for ``n`` nodes and ``scopes`` retry scopes appended to the run's graph
        (see ``Run.grow``)."""
        self.revert_target.extend([False] * n)
        self.revert_count.extend([0] * n)
        self.group.extend([None] * n)
        self.scope_failing.extend([False] * scopes)
        self.scope_reverting.extend([False] * scopes)
        self.scope_running.extend([0] * scopes)

    # Part deadlines -----------------------------------------------------------------------

    def set_part_deadline(self, s: int, attempt: int, deadline: float) -> None:
        """Bound attempt ``attempt`` of part ``s`` by ``deadline`` (journaled by the caller,
        on its controller's RUNNING event); the timer starts with the run."""
        self.part_deadlines[s] = (attempt, deadline)
        if self.run.tg is not None:
            self.arm_part(s)

    def arm_part(self, s: int) -> None:
        attempt, deadline = self.part_deadlines[s]
        old = self.part_timers.pop(s, None)
        if old is not None:
            old.cancel()
        self.part_timers[s] = self.run.timers.add(deadline, self.part_expired, s, attempt)

    def arm_parts(self) -> None:
        """Start the timers of the part deadlines restored from the journal; a deadline
        already past fails its part now (a run resumed, or woken, at that deadline must
        not rest again first)."""
        now = self.run.clock()
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
        scope = self.run.graph.scopes[s]
        return all(self.run.states[i] in FINISHED for i in scope.nodes)

    def part_expired(self, s: int, attempt: int) -> None:
        """Part ``s`` passed its deadline: cancel its running atoms and fail it with
        DeadlineExceededError; its retry, or the part around it, or the flow's revert
        takes that failure as any other."""
        self.part_timers.pop(s, None)
        scope = self.run.graph.scopes[s]
        c = scope.controller
        if (
            self.part_deadlines.get(s, (None, 0.0))[0] != attempt
            or self.run.attempts[c] != attempt
            or self.run.states[c] is not _S.SUCCESS
            or self.run.failing
            or self.scope_failing[s]
            or self.run.cancelled
            or self.part_done(s)
        ):
            return
        deadline = self.part_deadlines[s][1]
        exc = DeadlineExceededError(
            f"part {scope.name!r} of flow {self.run.graph.name!r} passed its deadline"
            f" ({scope.timeout} s after it started, at {deadline})"
        )
        failure = Failure.from_exception(exc)
        self.run.failures.setdefault(scope.name, failure)
        # Journaled on the part's controller (a success so far), which is reverted next
        # whatever takes the failure: a resume, or an outcome read from the journal,
        # knows why the part failed.
        self.run.set_atom(c, _S.REVERTING, {"failure": failure.to_dict()})
        self.run.results[c] = failure
        if self.run.first_error is None:
            self.run.first_error, self.run.first_error_at = exc, c
        retry = scope.retry
        if retry is not None and retry.should_retry(self.run.attempts[c], failure):
            target: int | None = s
        else:
            target = self.retry_scope_for(self.run.nodes[c], failure)
        if target is None:
            self.run.failing = True
        elif not self.scope_failing[target]:
            self.scope_failing[target] = True
        for i in scope.nodes:
            cancel = self.run.cancels.get(i)
            if cancel is not None:
                cancel.cancel()
        if target is not None:
            self.check_scope(target)
        self.check_idle()

    # Failing ----------------------------------------------------------------------------

    def cancel_flow(self, failure: Failure) -> None:
        """Revert the whole flow because ``engine.cancel`` asked: journaled first (the
        REVERTING event carries the failure), so a crash from here on resumes reverting."""
        self.run.cancel_failure = failure
        self.run.failures[CANCEL] = failure
        if self.run.first_error is None:
            self.run.first_error = failure.exception or FlowCancelledError(failure.message)
        self.run.failing = True
        self.run.retry_pending.clear()  # nothing runs again: what failed is reverted
        self.run.again_now.clear()
        self.run.set_flow(FlowStatus.REVERTING, {"cancel": failure.to_dict()})

    def fail(self, node: Node, failure: Failure, exc: BaseException | None) -> None:
        """Atom ``node`` failed for good: retry the part around it, or suspend the flow
        (``Retry.times(then="suspend")``), or fail it."""
        self.run.failures.setdefault(node.name, failure)
        self.run.results[node.index] = failure
        own = node.task.retry if node.task is not None else None
        scope = None if own is not None and own.suspends(failure) else (
            self.retry_scope_for(node, failure)
        )
        if scope is None and self.suspends(node, failure):
            # Nothing more starts; what runs finishes; the flow rests SUSPENDED.
            self.run.stopped_at = self.run.stopped_at or node.name
            return
        if self.run.first_error is None and exc is not None:
            self.run.first_error = exc
            self.run.first_error_at = node.index
        if scope is None:
            self.run.failing = True
        elif not self.scope_failing[scope]:
            self.scope_failing[scope] = True
            self.check_scope(scope)

    def suspends(self, node: Node, failure: Failure) -> bool:
        """True when ``failure`` of ``node``, retried by no policy any more, suspends the
        flow: the task's own retry, or the innermost part's retry that takes the failure,
        says ``then="suspend"``."""
        if self.run.failing:
            return False
        own = node.task.retry if node.task is not None else None
        if own is not None and own.suspends(failure):
            return True
        for s in reversed(node.scopes):
            retry = self.run.graph.scopes[s].retry
            if retry is not None and retry.values is None and failure.matches(*retry.on):
                return retry.suspends(failure)
        return False

    def retry_scope_for(self, node: Node, failure: Failure) -> int | None:
        for s in reversed(node.scopes):
            if self.scope_failing[s]:
                return s
            retry = self.run.graph.scopes[s].retry
            if retry is None:
                continue  # a part with only a deadline: the part around it decides
            if retry.should_retry(self.run.attempts[self.run.graph.scopes[s].controller], failure):
                return s
            if retry.revert_all:
                return None
        return None

    def check_scope(self, s: int) -> None:
        if (
            self.scope_failing[s]
            and not self.scope_reverting[s]
            and self.scope_running[s] == 0
            and not self.run.cancelled
            and self.run.tg is not None
        ):
            self.scope_reverting[s] = True
            if self.run.failing:
                return  # the whole flow reverts; this part with it
            scope = self.run.graph.scopes[s]
            members = [scope.controller, *scope.nodes]
            self.run.waits.abandon_waits(members)
            targets = [i for i in members if self.run.states[i] in TO_REVERT]
            self.revert_group(targets, lambda: self.restart_scope(s))

    def check_idle(self) -> None:
        run = self.run
        if run.running == 0 and run.failing and not run.reverting and not run.cancelled:
            self.start_revert()
        self.run.waits.idle_waits()

    def restart_scope(self, s: int) -> None:
        """Reset a reverted scope to PENDING and start its next attempt (after backoff)."""
        if self.run.failing or self.run.revert_failed or self.run.cancelled:
            return
        scope = self.run.graph.scopes[s]
        self.reset([scope.controller, *scope.nodes], keep_attempts=scope.controller)
        self.scope_failing[s] = self.scope_reverting[s] = False
        assert scope.retry is not None  # only a scope with a retry is restarted
        delay = scope.retry.delay(self.run.attempts[scope.controller])
        self.run.running += 1
        tg = self.run.tg
        assert tg is not None
        tg.start_soon(self.next_attempt, scope.controller, delay, name=f"retry {scope.name}")

    def reset(self, indices: list[int], keep_attempts: int | None = None) -> None:
        """Put nodes back to PENDING to run again: their results, failures, attempt counts
        (but that of ``keep_attempts``) and the retry scopes they control are forgotten,
        and their in-degrees recounted."""
        for i in indices:
            node = self.run.nodes[i]
            if node.kind == BARRIER:
                self.run.states[i] = _S.PENDING
            elif self.run.states[i] is not _S.PENDING:
                self.run.set_atom(i, _S.PENDING)
            self.run.failures.pop(node.name, None)
            self.run.results[i] = self.run.values[i] = None
            if i != keep_attempts:
                self.run.attempts[i] = 0
            if node.controls is not None:
                self.scope_failing[node.controls] = self.scope_reverting[node.controls] = False
            if self.run.first_error_at == i:
                self.run.first_error = self.run.first_error_at = None
        for i in indices:
            preds = self.run.nodes[i].preds
            self.run.indegree[i] = sum(1 for p in preds if self.run.states[p] not in FINISHED)

    async def next_attempt(self, controller: int, delay: float) -> None:
        try:
            if delay > 0:
                await self.run.sleep(delay)
            if not self.run.failing and self.run.ready(controller):
                self.run.release(controller)
            self.run.spawn()
        except anyio.get_cancelled_exc_class():
            self.run.cancelled = True
            raise
        finally:
            self.run.running -= 1
            self.check_idle()

    def start_retry(self, i: int) -> bool:
        """Run a retry controller: it starts its flow's next attempt and publishes, with
        ``Retry.for_each``, that attempt's value."""
        node = self.run.nodes[i]
        assert node.kind == RETRY and node.controls is not None
        scope = self.run.graph.scopes[node.controls]
        retry = scope.retry
        self.run.attempts[i] += 1
        if scope.timeout is None:
            self.run.set_atom(i, _S.RUNNING)
        else:
            deadline = self.run.clock() + scope.timeout
            self.run.set_atom(i, _S.RUNNING, {"deadline": deadline})
            self.set_part_deadline(node.controls, self.run.attempts[i], deadline)
        attempt = self.run.attempts[i]
        value = attempt if retry is None or retry.values is None else retry.values[attempt - 1]
        self.run.set_atom(i, _S.SUCCESS, {"result": value})
        self.run.results[i] = self.run.values[i] = value
        return True

    # Reverting --------------------------------------------------------------------------

    def start_revert(self) -> None:
        """Revert every atom that ran, dependents first, independent branches at once."""
        self.run.reverting = True
        if self.run.status is not FlowStatus.REVERTING:
            self.run.set_flow(FlowStatus.REVERTING)
        if not self.run.revert_failed:
            self.run.waits.abandon_waits()
            self.revert_group([i for i, s in enumerate(self.run.states) if s in TO_REVERT], None)

    def revert_group(self, targets: list[int], done: Callable[[], None] | None) -> None:
        group = _Group(len(targets), done)
        for i in targets:
            self.revert_target[i] = True
            self.group[i] = group
        for i in targets:
            self.revert_count[i] = sum(1 for s in self.run.nodes[i].succs if self.revert_target[s])
        if not targets:
            if done is not None:
                done()
            return
        # Those free at the start, listed before any is reverted: reverting a join frees
        # its predecessors at once, and the loop must not start them a second time.
        for i in [i for i in reversed(targets) if self.revert_count[i] == 0]:
            self.revert_node(i)

    def revert_node(self, i: int) -> None:
        stack = [i]
        while stack:
            j = stack.pop()
            if self.run.nodes[j].kind == BARRIER:
                self.run.states[j] = _S.REVERTED
                stack.extend(self.reverted(j))
            else:
                self.run.running += 1
                assert self.run.tg is not None
                self.run.tg.start_soon(self.revert_atom, j, name=f"revert {self.run.nodes[j].name}")

    def reverted(self, i: int) -> list[int]:
        """Count ``i`` as reverted; return the predecessors now free to revert."""
        self.revert_target[i] = False
        ready = []
        for p in self.run.nodes[i].preds:
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
        run = self.run
        node = run.nodes[i]
        hooks = self.run.hooks if node.task is not None else None
        entered: list[Any] = []
        info: Attempt | None = None
        try:
            self.run.set_atom(i, _S.REVERTING)
            if node.task is not None:
                injections = (
                    run.injections(i, run.attempts[i]) if node.task._injects else NO_INJECTIONS
                )
                if hooks is not None and self.run.flow_run is not None:
                    info = Attempt(self.run.flow_run, node.name, self.run.attempts[i], "revert")
                    entered = hooks.enter(info)
                await node.task._call_revert(
                    run.arguments(node), run.results[i], dict(run.failures), injections
                )
        except anyio.get_cancelled_exc_class():
            self.run.cancelled = True
            if info is not None:
                info.state = _S.REVERTING
                Hooks.exit(entered, None)
            raise
        except Exception as exc:
            if info is not None:
                info.state, info.error = _S.REVERT_FAILURE, exc
                Hooks.exit(entered, exc)
            failure = Failure.from_exception(exc)
            self.run.set_atom(i, _S.REVERT_FAILURE, {"failure": failure.to_dict()})
            self.run.failures.setdefault(node.name, failure)
            self.run.revert_failed = self.run.failing = True
            self.run.log.warning("aioflow.revert_failed", atom=node.name, error=str(failure))
            return
        finally:
            self.run.running -= 1
            self.check_idle()
        if info is not None:
            info.state = _S.REVERTED
            Hooks.exit(entered, None)
        ticket = self.run.set_atom(i, _S.REVERTED)
        if self.run.strict and node.preds and self.run.journal.durable < ticket:
            # A dependency is undone only once its dependent's undo is committed, so that
            # after a crash the dependent's revert never runs again above an undone base.
            try:
                await self.run.journal.wait_durable(ticket)
            except anyio.get_cancelled_exc_class():
                self.run.cancelled = True
                raise
        if not self.run.revert_failed:
            for p in self.reverted(i):
                self.revert_node(p)
