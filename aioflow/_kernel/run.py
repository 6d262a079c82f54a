"""One run of a compiled flow: the scheduler the engine drives.

Scheduling is driven by in-degree counters: when an atom finishes, each successor's
counter drops by one, and a successor whose counter reaches zero is ready. Nothing ever
rescans the graph, so a step costs O(1) per edge. All of it runs on the event loop's
thread; the only awaits are the atoms themselves and, in ``strict`` durability, the
wait for the commit of a result before the atoms that build on it start.

Reverting uses the same idea backwards: an atom is reverted once every successor that
needs reverting has been, so dependents go before their dependencies and independent
branches revert concurrently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._codec import NO_RESULT, Encoded, size_hint
from .._compile import BARRIER, CHECKPOINT, INPUT, MAP, RETRY, TASK, ExecGraph, Node, RetryScope
from .._errors import DeadlineExceededError, SerializationError
from .._eta import AtomTiming, History, summarize
from .._events import Event, EventKind
from .._failure import CANCEL, Failure
from .._handles import External, Progress, TaskContext, WaitRequest
from .._instruments import Hooks
from .._log import get_logger
from .._outcome import AtomOutcomes, Outcome
from .._progress import FlowProgress
from .._replay import EXPANDED as _EXPANDED
from .._replay import FlowState
from .._scope import membership
from .._states import ATOM_TRANSITIONS, Atoms, AtomState, FlowStatus, check_atom, check_flow
from .._task import INJECT_CONTEXT, INJECT_EXTERNAL, INJECT_PROGRESS, Task
from .._values import DEFAULT_MAX_VALUE_BYTES, encode_large, measure_from
from ..instrument import Attempt, FlowRun
from .mapping import Mapper
from .reverting import FINISHED as _FINISHED
from .reverting import NO_INJECTIONS as _NO_INJECTIONS
from .reverting import TO_REVERT, Reverter
from .waits import Waits
from .workers import Workers

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from .._timers import Timers
    from ..journal import Journal
    from ..journal._base import Fence

_S = Atoms
_ATOM = EventKind.ATOM
_LOG = get_logger("aioflow")
_YIELD_EVERY = 64
_NO_ARGS: dict[str, Any] = {}  # handed out by Run.arguments, never changed


class Run:
    """The live state of one flow run in one engine."""

    _log: Any

    @property
    def log(self) -> Any:
        """The run's logger, bound to its flow id."""
        if self._log is None:
            self._log = _LOG.bind(flow_id=self.flow_id)
        return self._log

    def __init__(
        self,
        *,
        graph: ExecGraph,
        flow_id: str,
        inputs: Mapping[str, Any],
        journal: Journal,
        publish: Callable[[Event], None] | None,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        strict: bool,
        progress_interval: float,
        seq: int = 0,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        timers: Timers,
    ) -> None:
        self.graph = graph
        self.compiled = graph  # as compiled, shared: never grown (see grow)
        self.timers = timers
        # Atoms of parts with a deadline, while they run: what cancels each.
        self.cancels: dict[int, anyio.CancelScope] = {}
        self.nodes = graph.nodes
        self.flow_id = flow_id
        self.inputs = dict(inputs)
        self.journal = journal
        self.publish = publish
        self.clock = clock
        self.sleep = sleep
        self.strict = strict
        self.progress_interval = progress_interval
        self.seq = seq
        self.max_value_bytes = max_value_bytes
        # Results estimated from this size on are measured (see encode_large).
        self.measure_from = measure_from(max_value_bytes)
        self.last_ticket = 0  # the journal's ticket of this run's last event
        self.fence: Fence | None = None  # this run's ownership of its flow
        n = len(self.nodes)
        self.states = [_S.PENDING] * n
        self.attempts = [0] * n
        self.results: list[Any] = [None] * n
        self.values: list[Any] = [None] * n
        self.indegree = [len(node.preds) for node in self.nodes]
        self.progress = [0.0] * n
        self.details: list[Mapping[str, Any] | None] = [None] * n
        self.started: list[float | None] = [None] * n
        self.finished: list[float | None] = [None] * n
        self.saved_at = [-math.inf] * n
        self.unsaved = [False] * n
        self.failures: dict[str, Failure] = {}
        self.first_error: BaseException | None = None
        self.first_error_at: int | None = None
        self.retry_until = [0.0] * n
        self.retry_pending: list[int] = []
        self.again_now: set[int] = set()  # of retry_pending: run at once (a suspension)
        self.status = FlowStatus.PENDING
        self.failing = False
        self.reverting = False
        self.revert_failed = False
        self.stop_at: str | None = None
        self.stopped_at: str | None = None
        self.checkpoint: str | None = None
        self.running = 0
        self.cancelled = False
        self.startable: deque[int] = deque()
        self.revert_to: str | None = None
        # engine.cancel: what stops this run (see Engine._drive), and why it reverts.
        self.stop: anyio.CancelScope | None = None
        self.cancel_failure: Failure | None = None
        # Instruments (aioflow.instrument): None when the engine has none.
        self.hooks: Hooks | None = None
        self.flow_run: FlowRun | None = None
        self.trace: dict[str, str] = {}  # where the flow was started (its first event)
        self.spans: list[dict[str, str]] = []  # what earlier runs' instruments returned
        self.span: dict[str, str] = {}  # what this run's returned: recorded at rest
        self.restored = False  # taken up from the journal (see restore)
        self.grown = False  # nodes were appended (see grow): the graph is this run's own
        self.migrated: dict[str, Any] | None = None  # a migration to journal as it resumes
        self.compacting = False
        self.compaction: tuple[int, int | None, float | None] | None = None
        self.tg: TaskGroup | None = None
        self.limiter: anyio.CapacityLimiter | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = threading.get_ident()
        self._log = None  # bound on first use (see log): binding costs ~10 us a run
        self.ended = anyio.Event()  # set when the engine's drive of this run has ended
        # The run's rooms (see aioflow/_kernel/__init__.py): what runs atoms on asyncio,
        # what reverts, and what waits.
        self.workers = Workers(self)
        self.reverter = Reverter(self)
        self.waits = Waits(self)
        self.mapper = Mapper(self)
        # The scheduler asks the Maps' gates (max_parallel) about these nodes only.
        self.gated = self.mapper.gated
        self.gate_ends = self.mapper.gate_ends
        # The scheduler counts the atoms running in each part, and skips parts failing.
        self.scope_failing = self.reverter.scope_failing
        self.scope_running = self.reverter.scope_running

    def grow(
        self,
        nodes: list[Node],
        scopes: list[RetryScope] | None = None,
        within: tuple[int, ...] = (),
    ) -> None:
        """Append ``nodes`` to this run's graph while it runs (a Map's copies): each
        node's index follows the last, its predecessors are nodes already there or
        earlier among ``nodes``, and it starts PENDING; a node whose predecessors have
        all finished is ready at the next release. Nodes already there get the new ones
        as successors; new nodes bring their successors among themselves. ``scopes``
        are retry scopes of the new nodes, appended likewise; ``within`` names the
        scopes around them, whose parts they join. The compiled graph, which other runs
        share, is copied first."""
        graph = self.graph
        if not self.grown:
            graph = self.graph = dataclasses.replace(
                graph,
                nodes=list(graph.nodes),
                index=dict(graph.index),
                checkpoints=dict(graph.checkpoints),
                scopes=[dataclasses.replace(s, nodes=list(s.nodes)) for s in graph.scopes],
            )
            self.nodes = graph.nodes
            self.grown = True
        start = len(graph.nodes)
        added: dict[int, list[int]] = {}
        for node in nodes:
            if node.index != len(graph.nodes):
                raise ValueError(
                    f"node {node.name!r} (index {node.index}) cannot be appended: it needs"
                    f" index {len(graph.nodes)}"
                )
            if node.name in graph.index:
                raise ValueError(
                    f"node {node.name!r} cannot be appended: the graph has a node of that name"
                )
            for p in node.preds:
                if not 0 <= p < node.index:
                    raise ValueError(f"node {node.name!r}: predecessor {p} is not in the graph")
                if p < start:
                    added.setdefault(p, []).append(node.index)
            graph.nodes.append(node)
            if node.kind != BARRIER:
                graph.index[node.name] = node.index
                if node.kind == CHECKPOINT:
                    graph.checkpoints[node.name] = node.index
        for p, succs in added.items():
            pred = graph.nodes[p]
            graph.nodes[p] = dataclasses.replace(pred, succs=(*pred.succs, *succs))
        for scope in scopes or ():
            if scope.index != len(graph.scopes):
                raise ValueError(f"scope {scope.name!r} needs index {len(graph.scopes)}")
            graph.scopes.append(scope)
        indices = range(start, len(graph.nodes))
        for s in within:
            graph.scopes[s].nodes.extend(indices)
        n = len(nodes)
        self.states.extend([_S.PENDING] * n)
        self.attempts.extend([0] * n)
        self.results.extend([None] * n)
        self.values.extend([None] * n)
        self.progress.extend([0.0] * n)
        self.details.extend([None] * n)
        self.started.extend([None] * n)
        self.finished.extend([None] * n)
        self.saved_at.extend([-math.inf] * n)
        self.unsaved.extend([False] * n)
        self.retry_until.extend([0.0] * n)
        done = _FINISHED
        states = self.states
        self.indegree.extend(sum(1 for p in node.preds if states[p] not in done) for node in nodes)
        self.reverter.grow(n, len(scopes or ()))
        self.waits.grow(n)

    # Events --------------------------------------------------------------------------

    def emit(
        self,
        kind: EventKind,
        atom: str | None,
        state: AtomState | FlowStatus | None,
        attempt: int = 0,
        progress: float | None = None,
        details: Mapping[str, Any] | None = None,
        tell: bool = True,
        now: float | None = None,
    ) -> int:
        """Append an event to the journal (no await) and, unless ``tell`` is false, tell
        listeners; return its ticket. Without listeners no Event object is made."""
        seq = self.seq + 1
        time = self.clock() if now is None else now
        if tell and self.publish is not None:
            encoded = None
            if details is None:
                details = {}
            elif details is NO_RESULT:  # shared: a listener gets one of its own
                details = dict(details)
            elif type(details) is Encoded:  # the journal takes its text, listeners the value
                encoded, details = details, details.details
            event = Event(self.flow_id, seq, time, kind, atom, state, attempt, progress, details)
            ticket = (
                self.journal.append(event)
                if encoded is None
                else self.journal.record(
                    self.flow_id, seq, time, kind, atom, state, attempt, progress, encoded
                )
            )
            self.seq = seq
            self.last_ticket = ticket
            self.publish(event)
            return ticket
        ticket = self.journal.record(
            self.flow_id, seq, time, kind, atom, state, attempt, progress, details
        )
        self.seq = seq
        self.last_ticket = ticket
        return ticket

    def set_flow(self, status: FlowStatus, details: Mapping[str, Any] | None = None) -> int:
        check_flow(self.flow_id, self.status, status)
        self.status = status
        return self.emit(EventKind.FLOW, None, status, details=details)

    def set_atom(self, i: int, state: AtomState, details: Mapping[str, Any] | None = None) -> int:
        node = self.nodes[i]
        if state not in ATOM_TRANSITIONS[self.states[i]]:
            check_atom(node.name, self.states[i], state)  # raises, naming the atom
        now = self.clock()
        if state is _S.RUNNING:
            progress = 0.0
            self.started[i] = now
        elif state is _S.SUCCESS:
            progress = 1.0
            self.finished[i] = now
        elif state is _S.FAILURE:
            progress = self.progress[i]
            self.finished[i] = now
        else:
            progress = 0.0
            if state is _S.REVERTED or state is _S.REVERT_FAILURE:
                self.finished[i] = now
        if self.unsaved[i]:
            self.save_progress(i, now, tell=False)
        if self.publish is None:  # emit's own path without listeners, one call less an event
            seq = self.seq + 1
            ticket = self.journal.record(
                self.flow_id, seq, now, _ATOM, node.name, state, self.attempts[i], progress, details
            )
            self.seq = seq
            self.last_ticket = ticket
        else:
            ticket = self.emit(
                EventKind.ATOM, node.name, state, self.attempts[i], progress, details, now=now
            )
        self.states[i] = state
        self.progress[i] = progress
        return ticket

    # Progress ------------------------------------------------------------------------

    def reporter(self, i: int, attempt: int) -> Callable[[float, dict[str, Any]], None]:
        # Reports from a worker thread are queued, and the loop is woken only when the
        # queue was empty: one wake-up drains a burst, so a thread reporting in a tight
        # loop costs the loop (and itself) little, and listeners still hear every report.
        pending: deque[tuple[float, dict[str, Any]]] = deque()

        def drain() -> None:
            while pending:
                fraction, details = pending.popleft()
                self.on_progress(i, attempt, fraction, details)

        def report(fraction: float, details: dict[str, Any]) -> None:
            if threading.get_ident() == self.loop_thread:
                self.on_progress(i, attempt, fraction, details)
            elif self.loop is not None:
                pending.append((fraction, details))
                if len(pending) == 1:
                    self.loop.call_soon_threadsafe(drain)
            else:
                anyio.from_thread.run_sync(self.on_progress, i, attempt, fraction, details)

        return report

    def on_progress(self, i: int, attempt: int, fraction: float, details: dict[str, Any]) -> None:
        if self.states[i] is not _S.RUNNING or self.attempts[i] != attempt:
            return  # a report from an attempt that has ended
        self.progress[i] = fraction
        self.details[i] = details
        now = self.clock()
        if now - self.saved_at[i] >= self.progress_interval:
            self.save_progress(i, now)
        else:
            self.unsaved[i] = True
            if self.publish is not None:
                self.publish(
                    Event(
                        self.flow_id,
                        self.seq,
                        now,
                        EventKind.PROGRESS,
                        self.nodes[i].name,
                        None,
                        attempt,
                        fraction,
                        details,
                    )
                )

    def save_progress(self, i: int, now: float | None = None, *, tell: bool = True) -> None:
        """Journal atom ``i``'s latest report; ``tell=False`` when listeners heard it already
        (the last report before a state change, kept only then)."""
        self.unsaved[i] = False
        self.saved_at[i] = self.clock() if now is None else now
        name, attempt, fraction = self.nodes[i].name, self.attempts[i], self.progress[i]
        try:
            self.emit(EventKind.PROGRESS, name, None, attempt, fraction, self.details[i], tell)
        except SerializationError as exc:
            # Progress is informative: a detail the codec cannot store is dropped (and
            # said so), never allowed to break the atom's state changes.
            self.log.warning("aioflow.progress_details_dropped", atom=name, error=str(exc))
            self.details[i] = None
            self.emit(EventKind.PROGRESS, name, None, attempt, fraction, None, tell)

    # Forward ---------------------------------------------------------------------------

    def begin(self, tg: TaskGroup) -> None:
        """Start what is ready: the roots of a new run, or where a resumed run stood."""
        self.tg = tg
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        self.loop_thread = threading.get_ident()
        if self.loop is not None:
            self.workers.members = membership(tg.cancel_scope)
            if self.workers.members is None:
                self.workers.scope_class = type(anyio.CancelScope())
        self.waits.start_wakes()
        self.waits.arm_waits()
        if self.failing or self.reverting:
            self.reverter.start_revert()
            return
        self.reverter.arm_parts()  # a deadline already past fails its part (and may revert) now
        if self.reverting:
            return
        for s, failing in enumerate(self.scope_failing):
            if failing:
                self.reverter.check_scope(s)
        indegree, to_run = self.indegree, (_S.PENDING, _S.RETRYING)
        roots = [i for i, state in enumerate(self.states) if not indegree[i] and state in to_run]
        for i in roots:  # taken first: releasing makes more nodes ready, once each
            if self.ready(i):
                self.release(i)
        self.spawn()
        self.reverter.check_idle()

    def ready(self, i: int) -> bool:
        """Handle a node whose predecessors all finished; True if it finished at once."""
        if self.failing or self.stopped_at is not None:
            return False
        node = self.nodes[i]
        if node.scopes and any(self.scope_failing[s] for s in node.scopes):
            return False
        if self.gated and i in self.gated and not self.mapper.admit(i):
            return False  # a copy of a Map past its max_parallel: it starts when one ends
        if (
            node.preds
            and any(self.states[p] is _S.IGNORED for p in node.preds)
            and (node.mapping is None or node.kind != BARRIER)  # a Map's collector decides
        ):
            return self.ignore(i)
        if node.deciders:
            upstream = self.upstream_results(node)
            try:
                go = all(bool(decider(upstream)) for decider in node.deciders)
            except Exception as exc:
                self.reverter.fail(node, Failure.from_exception(exc), exc)
                return False
            if not go:
                return self.ignore(i)
        kind = node.kind
        if kind != TASK:
            if kind == BARRIER:
                if node.mapping is not None:
                    return self.mapper.collect(i)
                self.states[i] = _S.SUCCESS
                return True
            if kind == CHECKPOINT:
                return self.reach_checkpoint(i)
            if kind == RETRY:
                return self.reverter.start_retry(i)
            if kind == MAP:
                return self.mapper.expand(i)
        self.running += 1
        for s in node.scopes:
            self.scope_running[s] += 1
        self.startable.append(i)
        return False

    def spawn(self) -> None:
        """See that the atoms made ready get run.

        On asyncio, atoms run in *workers*: plain asyncio tasks that take ready atoms one
        after another and run each in place until it first waits for something. An atom
        that finishes without waiting (a no-op, a cached answer) costs no task at all; one
        that waits keeps its worker, and the worker starts up to two more for what is
        still ready, so a thousand sleeping atoms get their thousand tasks within a few
        turns of the loop. The workers live in the run's task group through one guard
        task (:meth:`guard_atoms`), which cancels them when the group is cancelled and
        raises what escaped them. Elsewhere (trio) each atom gets a task of the group.
        """
        if not self.startable:
            return
        loop = self.loop
        if loop is None:
            tg = self.tg
            assert tg is not None
            while self.startable:
                i = self.startable.popleft()
                tg.start_soon(self.run_atom, i, name=self.nodes[i].name)
            return
        if self.workers.unstarted or asyncio.current_task() in self.workers.atom_tasks:
            return  # a worker will take them: one about to start, or the one running this
        self.workers.add_workers(loop, 1)

    def ignore(self, i: int) -> bool:
        if self.nodes[i].kind == BARRIER:
            self.states[i] = _S.IGNORED
        else:
            self.set_atom(i, _S.IGNORED)
        return True

    def reach_checkpoint(self, i: int) -> bool:
        node = self.nodes[i]
        self.attempts[i] += 1
        self.set_atom(i, _S.RUNNING)
        self.emit(EventKind.CHECKPOINT, node.name, None, details={"reached": node.name})
        ticket = self.set_atom(i, _S.SUCCESS)
        self.checkpoint = node.name
        retention = node.checkpoint
        if retention is not None and (retention.keep or retention.keep_for):
            self.schedule_compaction(ticket, retention.keep, retention.keep_for)
        if self.stop_at == node.name:
            self.stopped_at = node.name
            return False
        return True

    def schedule_compaction(self, ticket: int, keep: int | None, keep_for: Any) -> None:
        """Compact the journal once the checkpoint's events are durable. One compaction
        runs at a time; a checkpoint reached meanwhile is compacted right after it."""
        before = None if keep_for is None else self.clock() - keep_for.total_seconds()
        self.compaction = (ticket, keep, before)
        if not self.compacting and self.tg is not None:
            self.compacting = True
            self.tg.start_soon(self.compact, name="compact journal")

    async def compact(self) -> None:
        try:
            while self.compaction is not None:
                ticket, keep, before = self.compaction
                self.compaction = None
                await self.journal.wait_durable(ticket)
                await self.journal.compact(self.flow_id, keep=keep, before=before)
        except Exception as exc:  # the history stays as it was; the flow goes on
            self.log.warning("aioflow.compaction_failed", error=str(exc))
        finally:
            self.compacting = False
            self.compaction = None

    def release(self, i: int) -> None:
        """Count ``i`` as finished for its successors, and start those now ready."""
        stack = [i]
        indegree = self.indegree
        gate_ends = self.gate_ends
        while stack:
            j = stack.pop()
            if gate_ends and j in gate_ends:
                self.mapper.copy_done(j)
            for s in self.nodes[j].succs:
                indegree[s] -= 1
                if indegree[s] == 0 and self.ready(s):
                    stack.append(s)

    def upstream_results(self, node: Node) -> dict[str, Any]:
        """What a decider of ``node`` is given: its upstream atoms' results by name (in a
        copy of a Map, by their names in the member, as the decider was written)."""
        out: dict[str, Any] = {}
        cut = node.name.rfind("].") + 2  # 1 when the node is no atom of a Map's copy
        prefix = node.name[:cut] if cut > 1 else None
        stack = list(node.preds)
        while stack:
            p = stack.pop()
            if self.nodes[p].kind == BARRIER:
                stack.extend(self.nodes[p].preds)
                continue
            name = self.nodes[p].name
            if prefix is not None and name.startswith(prefix):
                name = name[cut:]
            out[name] = self.results[p]
        return out

    def arguments(self, node: Node) -> dict[str, Any]:
        """The task's arguments (a shared empty dict, never changed, when it takes none)."""
        if not node.args:
            return _NO_ARGS
        args: dict[str, Any] = {}
        for param, provider, symbol in node.args:
            if provider == INPUT:
                args[param] = self.inputs[symbol]
            else:
                value = self.values[provider]
                args[param] = value[symbol] if self.nodes[provider].unpack else value
        return args

    def published(self, node: Node, result: Any) -> Any:
        if not node.unpack:
            return result
        if isinstance(result, Mapping):
            missing = [s for s in node.provides if s not in result]
            if missing:
                raise ValueError(
                    f"task {node.name!r} provides {list(node.provides)} but its result lacks"
                    f" {missing}"
                )
            return {s: result[s] for s in node.provides}
        if isinstance(result, str | bytes) or not hasattr(result, "__len__"):
            raise TypeError(
                f"task {node.name!r} provides {list(node.provides)}, so it must return a"
                f" sequence or mapping of them, not {type(result).__name__}"
            )
        if len(result) != len(node.provides):
            raise ValueError(
                f"task {node.name!r} provides {len(node.provides)} symbols"
                f" {list(node.provides)} but returned {len(result)} values"
            )
        return dict(zip(node.provides, result, strict=True))

    def injections(self, i: int, attempt: int) -> dict[str, Any]:
        """What the engine hands a task: its progress reporter, external handle, context."""
        node = self.nodes[i]
        progress = Progress(self.reporter(i, attempt))
        external = External(self.waits.token_for(i, attempt))
        context = TaskContext(
            self.flow_id,
            node.name,
            self.attempts[i],
            self.log.bind(atom=node.name, attempt=self.attempts[i]),
            progress,
            external,
        )
        return {INJECT_PROGRESS: progress, INJECT_EXTERNAL: external, INJECT_CONTEXT: context}

    async def run_atom(self, i: int) -> None:
        """Run atom ``i`` in a task of the group (trio), then what became ready meanwhile
        (the rest get tasks of their own): a chain costs one task, not one per step."""
        steps = 0
        while True:
            try:
                steps += 1
                if steps % _YIELD_EVERY == 0:
                    await anyio.lowlevel.checkpoint()  # let others run during a long chain
                await self.execute(i)
            except anyio.get_cancelled_exc_class():
                self.cancelled = True
                raise
            finally:
                self.atom_ended(i)
            if not self.startable:
                return
            i = self.startable.popleft()
            self.spawn()

    def atom_ended(self, i: int) -> None:
        self.running -= 1
        for s in self.nodes[i].scopes:
            self.scope_running[s] -= 1
            self.reverter.check_scope(s)
        if self.running == 0:  # check_idle acts on nothing else
            self.reverter.check_idle()

    async def execute(self, i: int) -> None:
        node = self.nodes[i]
        task = node.task
        assert task is not None
        ticket = 0
        if self.states[i] is _S.RETRYING:  # resumed while waiting for a retry
            wait = self.retry_until[i] - self.clock()
            if wait > 0:
                await self.sleep(wait)
        while True:
            self.attempts[i] += 1
            attempt = self.attempts[i]
            self.set_atom(i, _S.RUNNING)
            try:
                # The common case in fewer calls: no arguments, no injections, a plain
                # async task (Task._direct), a result published whole or none at all.
                args = self.arguments(node) if node.args else _NO_ARGS
                injections = self.injections(i, attempt) if task._injects else _NO_INJECTIONS
                if self.hooks is not None:
                    result = await self.instrumented(i, attempt, args, injections)
                elif node.timed or self.limiter is not None or task.timeout is not None:
                    result = await self.dispatch(i, args, injections)
                elif task._direct is not None:
                    result = await task._direct(**args)
                else:
                    result = await task._call_execute(args, injections)
                if result is not None and isinstance(result, WaitRequest):
                    self.waits.open_wait(i, result)
                    return
                value = self.published(node, result) if node.unpack else result
                details: Mapping[str, Any] = NO_RESULT
                if result is not None:
                    details = {"result": result}
                    hint = size_hint(result)
                    if hint is None or hint >= self.measure_from:  # no coroutine for small ones
                        details = await self.encode_large(node, details, hint)
                ticket = self.set_atom(i, _S.SUCCESS, details)
            except anyio.get_cancelled_exc_class():
                self.set_atom(i, _S.PENDING)
                raise
            except Exception as exc:
                if isinstance(exc, SerializationError) and exc.atom is None:
                    exc.atom = node.name
                failure = Failure.from_exception(exc)
                self.set_atom(i, _S.FAILURE, {"failure": failure.to_dict()})
                delay = self.plan_retry(i, exc)
                if delay is not None:
                    if delay > 0:
                        await self.sleep(delay)
                    if not self.halted(node):
                        continue
                self.reverter.fail(node, failure, exc)
                return
            self.results[i] = result
            self.values[i] = value
            break
        if node.succs and not self.failing:
            if self.strict and self.journal.durable < ticket:
                if self.loop is not None:  # a worker (see work): no wait here
                    self.workers.defer_release(i, ticket)
                    return
                await self.journal.wait_durable(ticket)
            self.release(i)

    async def dispatch(self, i: int, args: dict[str, Any], injections: dict[str, Any]) -> Any:
        """One attempt of atom ``i``'s task: in its part's deadline, under the engine's
        concurrency limit, within its own timeout, as each applies."""
        task = self.nodes[i].task
        assert task is not None
        if self.nodes[i].timed:
            return await self.attempt_in_part(i, task, args, injections)
        if self.limiter is not None:
            async with self.limiter:
                return await self.attempt(task, args, injections)
        return await self.attempt(task, args, injections)

    async def instrumented(
        self, i: int, attempt: int, args: dict[str, Any], injections: dict[str, Any]
    ) -> Any:
        """:meth:`dispatch` inside the instruments' blocks (see aioflow.instrument)."""
        hooks = self.hooks
        assert hooks is not None and self.flow_run is not None
        info = Attempt(self.flow_run, self.nodes[i].name, attempt, "execute")
        entered = hooks.enter(info)
        context = injections.get(INJECT_CONTEXT)
        if info.log_fields and context is not None:
            context.log = context.log.bind(**info.log_fields)
        try:
            result = await self.dispatch(i, args, injections)
        except BaseException as exc:
            if isinstance(exc, Exception):
                info.state, info.error = _S.FAILURE, exc
                hooks.exit(entered, exc)
            else:  # cancelled: the atom goes back to PENDING, which is no error
                info.state = _S.PENDING
                hooks.exit(entered, None)
            raise
        if isinstance(result, WaitRequest):
            info.state, info.wait = _S.WAITING, result.kind
        else:
            info.state = _S.SUCCESS
        hooks.exit(entered, None)
        return result

    async def encode_large(
        self, node: Node, details: Mapping[str, Any], hint: int | None
    ) -> Encoded:
        """The details of ``node``'s success, which :func:`~aioflow._codec.size_hint`
        estimates at ``hint`` bytes, encoded (off the loop when large) and measured;
        beyond ``max_value_bytes`` SerializationError (see :mod:`aioflow._values`)."""
        return await encode_large(
            self.journal.codec, self.flow_id, node.name, details, hint, self.max_value_bytes
        )

    def plan_retry(self, i: int, exc: BaseException) -> float | None:
        """When atom ``i``'s task retries after ``exc`` (its policy agrees and nothing
        halted its part of the flow), journal RETRYING and return the delay; else None."""
        node = self.nodes[i]
        retry = None if node.task is None else node.task.retry
        attempt = self.attempts[i]
        if retry is None or self.halted(node) or not retry.should_retry(attempt, exc):
            return None
        delay = retry.delay(attempt)
        self.set_atom(i, _S.RETRYING, {"until": self.clock() + delay})
        return delay

    def halted(self, node: Node) -> bool:
        """True when nothing more should start for ``node``: the flow or its part fails."""
        return self.failing or any(self.scope_failing[s] for s in node.scopes)

    async def attempt_in_part(
        self, i: int, task: Task, args: dict[str, Any], injections: dict[str, Any]
    ) -> Any:
        """An attempt of atom ``i`` of a part with a deadline, which may cancel it: then it
        fails with DeadlineExceededError (a thread task is abandoned, as past its own
        timeout)."""
        with self.workers.scope_class() as scope:
            self.cancels[i] = scope
            try:
                if self.limiter is not None:
                    async with self.limiter:
                        return await self.attempt(task, args, injections, abandon=True)
                return await self.attempt(task, args, injections, abandon=True)
            finally:
                del self.cancels[i]
        raise DeadlineExceededError(
            f"atom {self.nodes[i].name!r} was cancelled: its part passed its deadline"
        )

    def end_timers(self) -> None:
        """Call off this run's timers (the run has ended)."""
        self.waits.stop_timers()
        self.reverter.disarm_parts()

    @staticmethod
    async def attempt(
        task: Task, args: dict[str, Any], injections: dict[str, Any], *, abandon: bool = False
    ) -> Any:
        if task.timeout is None:
            return await task._call_execute(args, injections, abandon)
        with anyio.fail_after(task.timeout):
            return await task._call_execute(args, injections, abandon)

    # Restoring from the journal ----------------------------------------------------------

    def restore(self, state: FlowState) -> None:
        """Take up where the journal says the flow stood, and decide again what the
        engine had decided: which failures a retry takes, which part is being retried."""
        self.status = state.status
        self.checkpoint = state.checkpoint
        self.waits.mail = dict(state.mail)
        self.trace, self.spans = state.trace, state.spans
        self.restored = True
        if state.cancel is not None:  # cancelled: it reverts, whatever was interrupted
            self.cancel_failure = state.cancel
            self.failures[CANCEL] = state.cancel
            self.failing = not state.status.is_final
        records = state.atoms
        failed: list[int] = []
        unwinding: list[int] = []
        self.mapper.restore(records)  # the copies the Maps grew, from their lengths
        for node in self.nodes:
            i = node.index
            if node.kind == BARRIER:
                continue  # settled below, once what they join is restored
            record = records.get(node.name)
            if record is None:
                continue
            state_ = self.states[i] = record.state
            self.attempts[i] = record.attempt
            self.progress[i] = record.progress
            self.retry_until[i] = record.retry_until
            if node.kind == MAP:
                self.results[i] = record.result
                if state_ in _EXPANDED:
                    self.mapper.restore_value(i)
            elif state_ is _S.SUCCESS:
                self.results[i] = record.result
                self.values[i] = self.published(node, record.result)
            elif state_ in (_S.FAILURE, _S.RETRYING, _S.REVERT_FAILURE):
                assert record.failure is not None
                self.results[i] = record.failure
                if state_ is _S.FAILURE:
                    failed.append(i)
                elif state_ is _S.REVERT_FAILURE:
                    self.failures.setdefault(node.name, record.failure)
                    self.revert_failed = self.failing = True
            elif state_ is _S.WAITING:
                self.waits.restore_wait(i, record)
            elif state_ in (_S.REVERTING, _S.REVERTED):
                unwinding.append(i)
                if record.failure is not None:
                    self.results[i] = record.failure
                    self.failures.setdefault(node.name, record.failure)
            if node.kind == RETRY and state_ is _S.SUCCESS:
                self.values[i] = record.result
                deadline = record.details.get("deadline")
                if deadline is not None and node.controls is not None:
                    self.reverter.part_deadlines[node.controls] = (record.attempt, float(deadline))
        self.settle_joins()
        self.mapper.restore_gates()
        self.revert_to = state.revert_to
        if state.status is FlowStatus.REVERTING and self.revert_to is None:
            self.failing = True
        if self.revert_to is not None:
            unwinding = []  # an unfinished revert_to: those atoms are its work
        for i in unwinding:
            node = self.nodes[i]
            own = [node.controls] if node.controls is not None else []
            scopes = own or list(node.scopes[-1:])
            if self.failing or not scopes:
                self.failing = True
            else:
                self.scope_failing[scopes[0]] = True
        for i in failed:
            node = self.nodes[i]
            failure = self.results[i]
            retry = node.task.retry if node.task is not None else None
            if (
                not self.failing
                and retry is not None
                and retry.should_retry(self.attempts[i], failure)
            ):
                self.retry_pending.append(i)
            elif state.status is FlowStatus.SUSPENDED and self.reverter.suspends(node, failure):
                # Suspended by Retry.times(then="suspend"): a resume runs it again now.
                self.retry_pending.append(i)
                self.again_now.add(i)
            else:
                self.reverter.fail(node, failure, None)
        for s, scope in enumerate(self.graph.scopes):
            parent = scope.parent
            while parent is not None and self.scope_failing[s]:
                if self.scope_failing[parent]:
                    self.scope_failing[s] = False  # the enclosing retry redoes this part
                parent = self.graph.scopes[parent].parent
        for i, node in enumerate(self.nodes):
            self.indegree[i] = sum(1 for p in node.preds if self.states[p] not in _FINISHED)

    def settle_joins(self) -> None:
        """After a restore: a join whose predecessors all finished has finished (IGNORED
        when one was, but a Map's collector decides for itself). Joins after joins go
        first: a grown graph's indices are no longer in that order."""
        nodes, states = self.nodes, self.states
        settled = [node.kind != BARRIER for node in nodes]
        for start in range(len(nodes)):
            if settled[start]:
                continue
            stack = [start]
            while stack:
                j = stack[-1]
                waiting = [p for p in nodes[j].preds if not settled[p]]
                if waiting:
                    stack.extend(waiting)
                    continue
                stack.pop()
                if settled[j]:
                    continue
                settled[j] = True
                preds = [states[p] for p in nodes[j].preds]
                if not all(s in _FINISHED for s in preds):
                    continue
                if nodes[j].mapping is not None:
                    self.mapper.collect(j)
                else:
                    states[j] = _S.IGNORED if _S.IGNORED in preds else _S.SUCCESS

    def resume_events(self) -> None:
        """Journal what resuming changes: interrupted atoms go back to PENDING, and
        failures a task retry takes become RETRYING (with the backoff still owed)."""
        for i in self.interrupted():
            self.set_atom(i, _S.PENDING)
        for i in self.retry_pending:
            task = self.nodes[i].task
            retry = task.retry if task is not None else None
            wait = 0.0 if i in self.again_now or retry is None else retry.delay(self.attempts[i])
            self.retry_until[i] = self.clock() + wait
            self.set_atom(i, _S.RETRYING, {"until": self.retry_until[i]})
        self.retry_pending.clear()
        self.again_now.clear()
        self.waits.expire_waits()

    def after(self, i: int) -> list[int]:
        """Every node that (transitively) follows node ``i``, in index order."""
        seen = {i}
        stack = [i]
        while stack:
            for s in self.nodes[stack.pop()].succs:
                if s not in seen:
                    seen.add(s)
                    stack.append(s)
        seen.discard(i)
        return sorted(seen)

    def rewind(self, i: int, tg: TaskGroup) -> None:
        """Revert every atom that finished after node ``i`` (a checkpoint), dependents
        first, then leave them PENDING so the flow can run on from the checkpoint."""
        self.tg = tg
        later = self.after(i)
        targets = [j for j in later if self.states[j] in TO_REVERT]

        def done() -> None:
            self.reverter.reset(later)
            name = self.nodes[i].name
            self.emit(EventKind.CHECKPOINT, name, None, details={"reverted_to": name})
            self.checkpoint = self.stopped_at = name
            self.revert_to = None

        self.reverter.revert_group(targets, done)

    def interrupted(self) -> list[int]:
        """Atoms the journal shows running: their work must be done again (a wait
        stays open; see :meth:`restore_wait`)."""
        return [
            i
            for i, s in enumerate(self.states)
            if s is _S.RUNNING and self.nodes[i].kind != BARRIER
        ]

    # Results ---------------------------------------------------------------------------

    def final_status(self) -> FlowStatus:
        if self.reverting:
            return FlowStatus.FAILED if self.revert_failed else FlowStatus.REVERTED
        if self.stopped_at is not None:
            return FlowStatus.SUSPENDED
        if _S.WAITING in self.states:
            return FlowStatus.WAITING
        return FlowStatus.SUCCESS

    def outcome(self) -> Outcome:
        results: dict[str, Any] = {}
        for symbol, provider in self.graph.symbols.items():
            if provider == INPUT:
                results[symbol] = self.inputs[symbol]
            elif self.states[provider] is _S.SUCCESS:
                value = self.values[provider]
                results[symbol] = value[symbol] if self.nodes[provider].unpack else value
        atoms = AtomOutcomes(
            self.graph.index,
            list(self.states),
            list(self.results),
            list(self.progress),
            list(self.attempts),
        )
        return Outcome(
            self.flow_id,
            self.status,
            results,
            dict(self.failures),
            atoms,
            self.checkpoint,
            self.waits.waiting(),
        )

    def flow_progress(self, now: float, history: History | None = None) -> FlowProgress:
        """How far this run is at ``now``; ``history`` (earlier runs) sharpens the ETA."""
        atoms = [
            AtomTiming(
                node.name,
                self.states[node.index],
                self.progress[node.index],
                node.weight if node.task is not None else 0.0,
                self.details[node.index] or {},
                self.started[node.index],
                None if self.states[node.index] is _S.RUNNING else self.finished[node.index],
            )
            for node in self.graph.atoms
        ]
        return summarize(self.flow_id, self.status, atoms, now, history)
