"""External (delegated) work: waits, completion tokens and the watchdog.

A task hands its work to an outside system and returns ``external.wait(...)``: its atom
rests WAITING (the ATOM event carries the deadline and info, never the token) until a
signed token completes or fails it, or its deadline passes. This module holds the
task-facing half (:class:`External`, :class:`WaitRequest`), the run's half
(:class:`WaitingAtoms`, a mixin of :class:`aioflow._run.Run`) and the engine's half
(:class:`ExternalWork`: completing by token, waking resting flows, the watchdog).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ._codec import Encoded, size_hint
from ._errors import (
    AioflowError,
    ExternalTimeoutError,
    FlowBusyError,
    InvalidTokenError,
    NotFoundError,
)
from ._events import Event, EventKind
from ._failure import Failure
from ._log import get_logger
from ._outcome import Waiting
from ._replay import AtomRecord, replay
from ._states import AtomState, FlowStatus
from ._tokens import SECRET_META_KEY, Claim, Signer, new_nonce, new_secret, secret_from
from ._values import encode_large, measure_from

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._compile import ExecGraph, Node
    from ._engine import Engine
    from ._outcome import Outcome
    from ._run import Run
    from .journal import FlowSummary, Journal

_S = AtomState
_LOG = get_logger("aioflow")
_CONFLICT_RETRIES = 20


@dataclass(frozen=True, slots=True)
class WaitRequest:
    """What ``external.wait()`` returns: the atom is to rest until completed or timed out."""

    timeout: float | None
    info: Mapping[str, Any] = field(default_factory=dict)


class External:
    """Injected into a task that hands its work to an outside system.

    ``token`` is a bearer credential bound to this flow, atom and attempt; give it to the
    outside system, and ``return external.wait(timeout=..., info=...)`` from the task.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str | None) -> None:
        self._token = token

    @property
    def token(self) -> str:
        """The completion token for this attempt (secret: never log it)."""
        if self._token is None:
            raise AioflowError(
                "no completion token here: the engine issues tokens only to tasks it runs"
            )
        return self._token

    def wait(
        self, timeout: float | None = None, info: Mapping[str, Any] | None = None
    ) -> WaitRequest:
        """Ask the engine to rest this atom until the token completes it, at most
        ``timeout`` seconds (then it fails with :class:`~aioflow.ExternalTimeoutError`).
        ``info`` (JSON-able) is journaled and shown with the open wait."""
        if timeout is not None and not timeout > 0:
            raise ValueError(f"external wait timeout must be positive, not {timeout!r}")
        return WaitRequest(timeout, dict(info or {}))

    def __repr__(self) -> str:
        return "External(token=<hidden>)"


def wait_fields(details: Mapping[str, Any]) -> tuple[str | None, float | None, dict[str, Any]]:
    """(nonce, deadline, info) from the details of a WAITING event."""
    deadline = details.get("deadline")
    return (
        details.get("nonce"),
        None if deadline is None else float(deadline),
        dict(details.get("info") or {}),
    )


def timeout_failure(atom: str, deadline: float | None) -> tuple[Failure, ExternalTimeoutError]:
    exc = ExternalTimeoutError(f"the external wait of atom {atom!r} passed its deadline {deadline}")
    return Failure.from_exception(exc), exc


def as_failure(error: BaseException | str) -> tuple[Failure, BaseException]:
    """The failure an outside system reports through ``engine.fail(token, error)``."""
    exc = error if isinstance(error, BaseException) else RuntimeError(str(error))
    return Failure.from_exception(exc), exc


# The run's half ---------------------------------------------------------------------------


class WaitingAtoms:
    """The waiting half of :class:`aioflow._run.Run` (a mixin over its state)."""

    flow_id: str
    graph: ExecGraph
    nodes: list[Node]
    states: list[AtomState]
    attempts: list[int]
    results: list[Any]
    values: list[Any]
    failures: dict[str, Failure]
    failing: bool
    strict: bool
    running: int
    scope_running: list[int]
    tg: TaskGroup | None
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    status: FlowStatus
    cancelled: bool
    journal: Journal

    def init_waits(self) -> None:
        self.signer: Signer | None = None
        self.ended = anyio.Event()
        n = len(self.nodes)
        self.nonces: list[tuple[int, str] | None] = [None] * n
        self.deadlines: dict[int, float | None] = {}
        self.infos: dict[int, dict[str, Any]] = {}
        self.early: dict[int, tuple[Any, BaseException | None, Encoded | None]] = {}
        self.wakes: list[tuple[int, int, BaseException | None]] = []
        self.expired: list[int] = []
        self._by_name: dict[str, int] | None = None
        self.watchdogs: dict[int, anyio.CancelScope] = {}

    if TYPE_CHECKING:  # decided elsewhere in the run (so no runtime stubs shadow them)

        def set_atom(self, i: int, state: AtomState, details: Any = None) -> int: ...
        def published(self, node: Node, result: Any) -> Any: ...
        def halted(self, node: Node) -> bool: ...
        def fail(self, node: Node, failure: Failure, exc: BaseException | None) -> None: ...
        def release(self, i: int) -> None: ...
        def spawn(self) -> None: ...
        def check_scope(self, s: int) -> None: ...
        def check_idle(self) -> None: ...
        def atom_ended(self, i: int) -> None: ...
        def plan_retry(self, i: int, exc: BaseException) -> float | None: ...
        async def execute(self, i: int) -> None: ...

    # Opening ---------------------------------------------------------------------------

    def nonce_for(self, i: int, attempt: int) -> str:
        current = self.nonces[i]
        if current is None or current[0] != attempt:
            current = self.nonces[i] = (attempt, new_nonce())
        return current[1]

    def token_for(self, i: int, attempt: int) -> str | None:
        """The completion token of attempt ``attempt`` of atom ``i`` (None without a signer)."""
        if self.signer is None:
            return None
        nonce = self.nonce_for(i, attempt)
        return self.signer.issue(self.flow_id, self.nodes[i].name, attempt, nonce)

    def open_wait(self, i: int, request: WaitRequest) -> None:
        """Rest atom ``i`` WAITING (journaled with deadline and info, never the token)."""
        deadline = None if request.timeout is None else self.clock() + request.timeout
        info = dict(request.info)
        nonce = self.nonce_for(i, self.attempts[i])
        self.set_atom(i, _S.WAITING, {"deadline": deadline, "info": info, "nonce": nonce})
        self.deadlines[i] = deadline
        self.infos[i] = info
        early = self.early.pop(i, None)
        if early is not None:
            self.close_wait(i, *early)
        elif deadline is not None and self.tg is not None:
            # Registered now, not when the task starts: the run may find itself idle
            # (only waits left) before then, and must be able to call it off.
            scope = self.watchdogs[i] = anyio.CancelScope()
            self.tg.start_soon(self.watch_wait, i, self.attempts[i], deadline, scope)

    async def watch_wait(
        self, i: int, attempt: int, deadline: float, scope: anyio.CancelScope
    ) -> None:
        """Time out wait ``i`` at its deadline while the run goes on with other work.
        Once only waits are left the run rests, and this watchdog is called off
        (:meth:`idle_waits`): an entered engine's own watchdog takes over."""
        with scope:
            try:
                while self.states[i] is _S.WAITING and self.attempts[i] == attempt:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        _, exc = timeout_failure(self.nodes[i].name, deadline)
                        self.close_wait(i, None, exc)
                        return
                    await self.sleep(remaining)
            finally:
                if self.watchdogs.get(i) is scope:
                    del self.watchdogs[i]

    def idle_waits(self) -> None:
        """Call off the watchdogs when nothing but waits is left (from ``check_idle``)."""
        if self.running == 0 and self.watchdogs:
            for scope in self.watchdogs.values():
                scope.cancel()

    def restore_wait(self, i: int, record: AtomRecord) -> None:
        """Take up a wait the journal shows open; one past its deadline is to time out."""
        nonce, deadline, info = wait_fields(record.details)
        if nonce is not None:
            self.nonces[i] = (record.attempt, nonce)
        self.deadlines[i] = deadline
        self.infos[i] = info
        if deadline is not None and self.clock() >= deadline:
            self.expired.append(i)

    # Closing ---------------------------------------------------------------------------

    def index_of(self, atom: str) -> int | None:
        if self._by_name is None:
            self._by_name = {node.name: node.index for node in self.nodes}
        return self._by_name.get(atom)

    def complete_wait(
        self,
        claim: Claim,
        result: Any,
        error: BaseException | None,
        encoded: Encoded | None = None,
    ) -> int:
        """Close the wait ``claim`` names, live, and return the ticket of its journal event
        (0 when it is kept until the task returns its wait). Raises
        :class:`InvalidTokenError`, changing nothing, unless it is open in that attempt.
        ``encoded``: the details of a success, already encoded (a large result)."""
        i = self.index_of(claim.atom)
        if i is None:
            raise InvalidTokenError(f"flow {self.flow_id} has no atom {claim.atom!r}")
        current = self.nonces[i]
        if self.attempts[i] != claim.attempt or current is None or current[1] != claim.nonce:
            raise InvalidTokenError(
                f"the token of atom {claim.atom!r} is for an attempt that has ended"
            )
        state = self.states[i]
        if state is _S.RUNNING and i not in self.early:
            # The outside system was faster than the task's return: close at once after.
            self.early[i] = (result, error, encoded)
            return 0
        if state is not _S.WAITING:
            raise InvalidTokenError(f"the wait of atom {claim.atom!r} is closed (token used)")
        deadline = self.deadlines.get(i)
        if deadline is not None and self.clock() >= deadline:
            raise InvalidTokenError(
                f"the wait of atom {claim.atom!r} passed its deadline; the completion is refused"
            )
        return self.close_wait(i, result, error, encoded)

    def close_wait(
        self, i: int, result: Any, error: BaseException | None, encoded: Encoded | None = None
    ) -> int:
        """Journal the end of wait ``i`` now (a result the codec refuses raises and leaves
        the wait open) and schedule what follows; return the event's ticket. ``encoded``:
        the details of a success, already encoded (see :meth:`ExternalWork.close`)."""
        node = self.nodes[i]
        if error is None:
            try:
                value = self.published(node, result)
            except Exception as exc:
                error = exc
            else:
                details = {"result": result} if encoded is None else encoded
                ticket = self.set_atom(i, _S.SUCCESS, details)
                self.results[i] = result
                self.values[i] = value
                self.after_wait(i, ticket, None)
                return ticket
        failure = Failure.from_exception(error)
        ticket = self.set_atom(i, _S.FAILURE, {"failure": failure.to_dict()})
        self.results[i] = failure
        self.after_wait(i, ticket, error)
        return ticket

    def after_wait(self, i: int, ticket: int, error: BaseException | None) -> None:
        self.deadlines.pop(i, None)
        self.infos.pop(i, None)
        self.running += 1
        for s in self.nodes[i].scopes:
            self.scope_running[s] += 1
        if self.tg is None:
            self.wakes.append((i, ticket, error))
        else:
            self.tg.start_soon(self.go_on, i, ticket, error, name=self.nodes[i].name)

    def start_wakes(self) -> None:
        """Start what follows the waits closed before the run began (call from ``begin``)."""
        assert self.tg is not None
        for i, ticket, error in self.wakes:
            self.tg.start_soon(self.go_on, i, ticket, error, name=self.nodes[i].name)
        self.wakes.clear()

    def expire_waits(self) -> None:
        """Fail the waits found past their deadline on restore (call from resume)."""
        for i in self.expired:
            if self.states[i] is _S.WAITING:
                _, exc = timeout_failure(self.nodes[i].name, self.deadlines.get(i))
                self.close_wait(i, None, exc)
        self.expired.clear()

    async def go_on(self, i: int, ticket: int, error: BaseException | None) -> None:
        """After a wait closed: release its successors, or retry it, or fail the flow."""
        node = self.nodes[i]
        try:
            if error is not None:
                await self.retry_or_fail(i, error)
                return
            if node.succs and not self.failing:
                if self.strict:
                    await self.journal.wait_durable(ticket)
                self.release(i)
            self.spawn()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise
        finally:
            self.atom_ended(i)

    async def retry_or_fail(self, i: int, exc: BaseException) -> None:
        node = self.nodes[i]
        delay = self.plan_retry(i, exc)
        if delay is not None:
            if delay > 0:
                await self.sleep(delay)
            if not self.halted(node):
                await self.execute(i)
                return
        self.fail(node, Failure.from_exception(exc), exc)

    def abandon_waits(self, indices: list[int] | None = None) -> None:
        """Fail the open waits (of ``indices``, or all) because their part is reverting;
        the revert then receives that failure as ``result``."""
        for i in range(len(self.nodes)) if indices is None else indices:
            if self.states[i] is _S.WAITING:
                exc = AioflowError(
                    f"the external wait of atom {self.nodes[i].name!r} was abandoned: its"
                    " flow (or part) is reverting"
                )
                failure = Failure.from_exception(exc)
                self.set_atom(i, _S.FAILURE, {"failure": failure.to_dict()})
                self.results[i] = failure
                self.deadlines.pop(i, None)
                self.infos.pop(i, None)

    # Looking ---------------------------------------------------------------------------

    def waiting(self) -> tuple[Waiting, ...]:
        """The open waits, with their tokens (for the caller's :class:`Outcome` only)."""
        out = []
        for i, state in enumerate(self.states):
            if state is _S.WAITING:
                current = self.nonces[i]
                token = self.token_for(i, self.attempts[i]) if current is not None else None
                out.append(
                    Waiting(
                        self.nodes[i].name,
                        token or "",
                        self.deadlines.get(i),
                        dict(self.infos.get(i, {})),
                    )
                )
        return tuple(out)

    def next_deadline(self) -> float | None:
        found = [
            d for i, d in self.deadlines.items() if d is not None and self.states[i] is _S.WAITING
        ]
        return min(found, default=None)


# The engine's half ------------------------------------------------------------------------


@dataclass(slots=True)
class _Parked:
    """A flow this engine ran that rests WAITING: what it needs to wake it."""

    graph: ExecGraph
    settled: anyio.Event = field(default_factory=anyio.Event)
    outcome: Outcome | None = None
    error: BaseException | None = None
    watchdog: anyio.CancelScope | None = None


class ExternalWork:
    """Completion by token, waking flows that rest WAITING, and the watchdog of an engine.

    Completions and wake-ups in one engine go through one lock, and across engines through
    the journal's conditional append, so a wait is closed once and a flow wakes once.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._signer: Signer | None = None
        self._lock = anyio.Lock()
        self.parked: dict[str, _Parked] = {}

    async def signer(self) -> Signer:
        """The engine's signer: its ``secret``, ``AIOFLOW_SECRET``, or the journal's own."""
        if self._signer is None:
            key = secret_from(self.engine.secret)
            if key is None:
                stored = await self.engine.journal.set_meta_default(SECRET_META_KEY, new_secret())
                key = stored.encode("ascii")
            self._signer = Signer(key)
        return self._signer

    # Completing ------------------------------------------------------------------------

    async def close(self, token: str, result: Any, error: BaseException | str | None) -> None:
        """Complete (``error`` None) or fail the wait ``token`` names, once. A result
        beyond the engine's ``max_value_bytes`` raises SerializationError and leaves the
        wait open, as one the codec refuses does."""
        exc = None if error is None else as_failure(error)[1]
        engine = self.engine
        async with engine._session():
            claim = (await self.signer()).verify(token)
            encoded = None
            if exc is None:
                hint = size_hint(result)
                limit = engine.max_value_bytes
                if hint is None or hint >= measure_from(limit):
                    codec = engine.journal.codec
                    details = {"result": result}
                    encoded = await encode_large(
                        codec, claim.flow_id, claim.atom, details, hint, limit, completion=True
                    )
            async with self._lock:
                while True:
                    run = engine._live.get(claim.flow_id)
                    if run is None:
                        break
                    if not run.status.is_resting:
                        ticket = run.complete_wait(claim, result, exc, encoded)
                        if ticket:
                            await engine.journal.wait_durable(ticket)
                        return
                    await run.ended.wait()  # the run is ending: its last events commit
                await self._close_resting(claim, result, exc, encoded)

    async def _close_resting(
        self, claim: Claim, result: Any, exc: BaseException | None, encoded: Encoded | None
    ) -> None:
        journal = self.engine.journal
        busy: FlowSummary | None = None
        for _ in range(_CONFLICT_RETRIES):
            try:
                events = await journal.load(claim.flow_id)
            except NotFoundError:
                raise InvalidTokenError("the token's flow is not in this journal") from None
            state = replay(claim.flow_id, events)
            record = state.atoms.get(claim.atom)
            nonce, deadline, _ = wait_fields(record.details if record else {})
            if (
                record is None
                or record.attempt != claim.attempt
                or nonce != claim.nonce
                or record.state is not _S.WAITING
            ):
                raise InvalidTokenError(
                    f"the wait of atom {claim.atom!r} in flow {claim.flow_id} is closed or was"
                    " for an attempt that has ended (the token is stale or used)"
                )
            if deadline is not None and self.engine._clock() >= deadline:
                raise InvalidTokenError(
                    f"the wait of atom {claim.atom!r} in flow {claim.flow_id} passed its"
                    " deadline; the completion is refused"
                )
            if not state.status.is_resting:
                raise AioflowError(
                    f"flow {claim.flow_id} is running in another engine; complete its wait"
                    " once it rests (or in that engine)"
                )
            if busy is not None and busy.owner is not None:
                # Another engine has taken the flow to run it: complete the wait there.
                raise FlowBusyError(claim.flow_id, busy.owner, busy.lease_expires)
            if exc is None:
                details: Mapping[str, Any] = {"result": result} if encoded is None else encoded
                new_state, progress = _S.SUCCESS, 1.0
            else:
                details = {"failure": Failure.from_exception(exc).to_dict()}
                new_state, progress = _S.FAILURE, record.progress
            event = Event(
                claim.flow_id,
                state.last_seq + 1,
                self.engine._clock(),
                EventKind.ATOM,
                claim.atom,
                new_state,
                claim.attempt,
                progress,
                details,
            )
            if await journal.append_after(claim.flow_id, state.last_seq, [event]):
                if encoded is not None:  # the journal took the text, listeners get the value
                    event = dataclasses.replace(event, details=encoded.details)
                self.engine._publish(event)
                if state.status is FlowStatus.WAITING:
                    self.wake(claim.flow_id, state.ref)
                return
            summary = await journal.summary(claim.flow_id)
            expires = summary.lease_expires
            if summary.owner is not None and expires is not None and expires > journal.clock():
                busy = summary  # unless the reload finds the wait closed meanwhile
        raise AioflowError(f"flow {claim.flow_id} keeps changing; could not complete its wait")

    # Resting and waking ----------------------------------------------------------------

    def rest(self, run: Run) -> None:
        """Remember a run that ended WAITING, so a completion or its deadline wakes it."""
        tg = self.engine._tg
        if tg is None:
            return
        old = self.parked.get(run.flow_id)
        parked = _Parked(run.graph)
        self.parked[run.flow_id] = parked
        if old is not None and old.watchdog is not None:
            old.watchdog.cancel()
        deadline = run.next_deadline()
        if deadline is not None:
            parked.watchdog = anyio.CancelScope()
            tg.start_soon(self._watchdog, run.flow_id, parked, deadline, name="aioflow watchdog")

    async def _watchdog(self, flow_id: str, parked: _Parked, deadline: float) -> None:
        assert parked.watchdog is not None
        with parked.watchdog:
            clock = self.engine._clock
            while clock() < deadline:
                await self.engine._sleep(deadline - clock())
            if self.parked.get(flow_id) is parked:
                self.wake(flow_id, None)

    def wake(self, flow_id: str, ref: str | None) -> None:
        """Resume a resting flow in the entered engine's background, once: the flow is
        held in the engine at once, so a ``resume`` called meanwhile joins this run."""
        engine = self.engine
        tg = engine._tg
        if tg is None or flow_id in engine._slots:
            return
        parked = self.parked.get(flow_id)
        if parked is None and ref is None:
            return  # nothing here can build the flow: ``resume`` will
        slot = engine._hold(flow_id)
        tg.start_soon(self._wake, flow_id, parked, slot, name=f"wake flow {flow_id}")

    async def _wake(self, flow_id: str, parked: _Parked | None, slot: Any) -> None:
        outcome: Outcome | None = None
        error: Exception | None = None
        try:
            outcome = await self._resume(flow_id, parked)
        except FlowBusyError as exc:
            _LOG.info("aioflow.wake_skipped", flow_id=flow_id, owner=exc.owner)
        except Exception as exc:
            error = exc
            _LOG.warning("aioflow.wake_failed", flow_id=flow_id, error=str(exc))
        finally:
            slot.outcome, slot.error = outcome, error
            self.engine._let_go(flow_id, slot)
            if parked is not None:
                parked.outcome, parked.error = outcome, error
                parked.settled.set()

    async def _resume(self, flow_id: str, parked: _Parked | None) -> Outcome | None:
        engine = self.engine
        async with self._lock:
            if self.parked.get(flow_id) is parked and parked is not None:
                del self.parked[flow_id]
                if parked.watchdog is not None:
                    parked.watchdog.cancel()
            run = await engine._take(
                flow_id, graph=None if parked is None else parked.graph, only=FlowStatus.WAITING
            )
            if run is None:
                return await engine.outcome(flow_id)  # resumed or finished elsewhere
            run.signer = await self.signer()
            run.set_flow(
                FlowStatus.REVERTING if run.failing else FlowStatus.RUNNING,
                {"resumed": True, "woken": True},
            )
            run.resume_events()
            engine._live[flow_id] = run
        return await engine._drive(run)

    async def through(self, outcome: Outcome, flow_id: str) -> Outcome:
        """Follow a started flow that ended with ``outcome`` through its waits."""
        while outcome.status is FlowStatus.WAITING:
            parked = self.parked.get(flow_id)
            if parked is None:
                break
            await parked.settled.wait()
            if parked.error is not None:
                raise parked.error
            if parked.outcome is None:
                break
            outcome = parked.outcome
        return outcome
