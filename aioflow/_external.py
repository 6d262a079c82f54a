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
    FlowFailedError,
    InvalidTokenError,
    NotFoundError,
)
from ._events import Event, EventKind
from ._failure import CANCEL, Failure
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
    from ._timers import Timer, Timers
    from .journal import FlowSummary, Journal

_S = AtomState
_LOG = get_logger("aioflow")
_CONFLICT_RETRIES = 20
_ENDED = (FlowStatus.SUCCESS, FlowStatus.REVERTED, FlowStatus.FAILED)
MAIL_POLL = 1.0
"""Seconds between looks for messages that other processes sent to a flow running here
while one of its receives waits (sends made through this engine need no look)."""


EXTERNAL = "external"
SLEEP = "sleep"
RECEIVE = "receive"


@dataclass(frozen=True, slots=True)
class WaitRequest:
    """What ``external.wait()`` returns: the atom is to rest until completed or timed out.

    ``kind`` says what ends the wait: a token (``"external"``), its deadline, which a
    sleep reaches with success (``"sleep"``), or a message on ``topic`` (``"receive"``).
    ``until`` is an absolute deadline (the engine's clock), ``timeout`` a relative one."""

    timeout: float | None
    info: Mapping[str, Any] = field(default_factory=dict)
    kind: str = EXTERNAL
    until: float | None = None
    topic: str | None = None


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


def wait_kind(details: Mapping[str, Any]) -> str:
    """What ends the wait a WAITING event's details describe (see :class:`WaitRequest`)."""
    return str(details.get("kind", EXTERNAL))


def wait_fields(details: Mapping[str, Any]) -> tuple[str | None, float | None, dict[str, Any]]:
    """(nonce, deadline, info) from the details of a WAITING event."""
    deadline = details.get("deadline")
    return (
        details.get("nonce"),
        None if deadline is None else float(deadline),
        dict(details.get("info") or {}),
    )


def timeout_failure(
    atom: str, deadline: float | None, kind: str = EXTERNAL
) -> tuple[Failure, ExternalTimeoutError]:
    what = "wait for a message" if kind == RECEIVE else "external wait"
    exc = ExternalTimeoutError(f"the {what} of atom {atom!r} passed its deadline {deadline}")
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
    timers: Timers
    status: FlowStatus
    cancelled: bool
    journal: Journal
    part_deadlines: dict[int, tuple[int, float]]

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
        self.wait_timers: dict[int, Timer] = {}
        self.kinds: dict[int, str] = {}  # open wait -> what ends it
        # Messages: topic -> the last message id taken (the journal's ATOM events say
        # so), the receives waiting per topic in the order they opened, and a count of
        # the sends this engine saw (a take that raced one looks again).
        self.mail: dict[str, int] = {}
        self.receivers: dict[str, list[int]] = {}
        self.mail_seen = 0
        self.fetching: set[str] = set()
        # Set by the engine: called when a receive opens, so that the engine looks for
        # messages other processes send (see ExternalWork.watch_mail).
        self.watch_mail: Callable[[], None] | None = None

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
        def part_done(self, s: int) -> bool: ...
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
        """Rest atom ``i`` WAITING (journaled with its deadline and what ends it, never a
        token)."""
        if request.until is not None:
            deadline: float | None = request.until
        elif request.timeout is not None:
            deadline = self.clock() + request.timeout
        else:
            deadline = None
        info = dict(request.info)
        nonce = self.nonce_for(i, self.attempts[i])
        details: dict[str, Any] = {"deadline": deadline, "info": info, "nonce": nonce}
        if request.kind != EXTERNAL:
            details["kind"] = request.kind
        if request.topic is not None:
            details["topic"] = request.topic
        self.set_atom(i, _S.WAITING, details)
        self.deadlines[i] = deadline
        self.infos[i] = info
        self.kinds[i] = request.kind
        early = self.early.pop(i, None)
        if early is not None:
            self.close_wait(i, *early)
            return
        if deadline is not None and self.tg is not None:
            self.arm_wait(i)
        if request.topic is not None:
            self.receivers.setdefault(request.topic, []).append(i)
            self.fetch_mail(request.topic)  # a message sent before may be waiting
            if self.watch_mail is not None:
                self.watch_mail()

    def arm_wait(self, i: int) -> None:
        """Time wait ``i`` out (or end a sleep) at its deadline, while the run goes on with
        other work. Once only waits are left the run rests and this timer is called off
        (:meth:`idle_waits`): the engine's own timer for resting flows takes over."""
        deadline = self.deadlines.get(i)
        if deadline is not None:
            self.wait_timers[i] = self.timers.add(deadline, self.wait_due, i, self.attempts[i])

    def wait_due(self, i: int, attempt: int) -> None:
        self.wait_timers.pop(i, None)
        if self.states[i] is _S.WAITING and self.attempts[i] == attempt and not self.cancelled:
            self.expire_wait(i)

    def expire_wait(self, i: int) -> None:
        """Wait ``i`` reached its deadline: a sleep ends with success, another wait fails
        with ExternalTimeoutError."""
        kind = self.kinds.get(i, EXTERNAL)
        if kind == SLEEP:
            self.close_wait(i, None, None)
        else:
            _, exc = timeout_failure(self.nodes[i].name, self.deadlines.get(i), kind)
            self.close_wait(i, None, exc)

    def idle_waits(self) -> None:
        """Call off the timers when nothing but waits is left (from ``check_idle``)."""
        if self.running == 0 and self.wait_timers:
            self.stop_timers()

    def stop_timers(self) -> None:
        for timer in self.wait_timers.values():
            timer.cancel()
        self.wait_timers.clear()

    def arm_waits(self) -> None:
        """Start the timers of the waits restored from the journal, and look for the
        messages their receives wait for (call from ``begin``)."""
        for i, deadline in self.deadlines.items():
            if deadline is not None and self.states[i] is _S.WAITING:
                self.arm_wait(i)
        for topic in list(self.receivers):
            self.fetch_mail(topic)
        if self.receivers and self.watch_mail is not None:
            self.watch_mail()

    def restore_wait(self, i: int, record: AtomRecord) -> None:
        """Take up a wait the journal shows open; one past its deadline is to time out."""
        nonce, deadline, info = wait_fields(record.details)
        if nonce is not None:
            self.nonces[i] = (record.attempt, nonce)
        self.deadlines[i] = deadline
        self.infos[i] = info
        self.kinds[i] = wait_kind(record.details)
        topic = record.details.get("topic")
        if topic is not None:
            self.receivers.setdefault(str(topic), []).append(i)
        if deadline is not None and self.clock() >= deadline:
            self.expired.append(i)

    # Messages --------------------------------------------------------------------------

    async def take_mail(self, topic: str) -> tuple[int, Any, int] | None:
        """The next message on ``topic`` this flow has not taken, reserved for the caller
        (the cursor moves at once, so two receives never take the same one): its id, its
        value and where the cursor stood before."""
        while True:
            cursor = self.mail.get(topic, 0)
            seen = self.mail_seen
            got = await self.journal.next_message(self.flow_id, topic, cursor)
            if self.mail.get(topic, 0) != cursor:
                continue  # another receive took one meanwhile: look after it
            if got is None:
                if self.mail_seen != seen:
                    continue  # a send arrived while looking
                return None
            self.mail[topic] = got[0]
            return got[0], got[1], cursor

    def mail_arrived(self, topic: str) -> None:
        """A send to this flow was stored (by this engine, or seen by polling)."""
        self.mail_seen += 1
        if self.receivers.get(topic):
            self.fetch_mail(topic)

    def fetch_mail(self, topic: str) -> None:
        """Deliver the waiting messages of ``topic`` to its open receives, in the
        background of the run (it counts as running meanwhile)."""
        if topic in self.fetching or self.tg is None or self.cancelled:
            return
        self.fetching.add(topic)
        self.running += 1
        try:
            self.tg.start_soon(self.deliver, topic, name=f"mail {topic}")
        except RuntimeError:  # the run is ending: the engine looks once it rests
            self.fetching.discard(topic)
            self.running -= 1

    async def deliver(self, topic: str) -> None:
        try:
            waiting = self.receivers.get(topic)
            while waiting:
                got = await self.take_mail(topic)
                waiting = self.receivers.get(topic)
                if got is None:
                    break
                if not waiting:  # the receive closed meanwhile: the message stays
                    if self.mail.get(topic) == got[0]:
                        self.mail[topic] = got[2]
                    break
                self.close_wait(waiting[0], got[1], None, mail=(topic, got[0]))
        finally:
            self.fetching.discard(topic)
            self.running -= 1
            if self.running == 0:
                self.check_idle()

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
        if self.kinds.get(i, EXTERNAL) != EXTERNAL:
            raise InvalidTokenError(
                f"atom {claim.atom!r} is not an external wait: no token ends it"
            )
        deadline = self.deadlines.get(i)
        if deadline is not None and self.clock() >= deadline:
            raise InvalidTokenError(
                f"the wait of atom {claim.atom!r} passed its deadline; the completion is refused"
            )
        return self.close_wait(i, result, error, encoded)

    def close_wait(
        self,
        i: int,
        result: Any,
        error: BaseException | None,
        encoded: Encoded | None = None,
        *,
        mail: tuple[str, int] | None = None,
    ) -> int:
        """Journal the end of wait ``i`` now (a result the codec refuses raises and leaves
        the wait open) and schedule what follows; return the event's ticket. ``encoded``:
        the details of a success, already encoded (see :meth:`ExternalWork.close`);
        ``mail``: the (topic, id) of the message a receive takes as its result."""
        node = self.nodes[i]
        if error is None:
            try:
                value = self.published(node, result)
            except Exception as exc:
                error = exc
            else:
                details: Mapping[str, Any]
                if mail is not None:
                    details = {"result": result, "mail": list(mail)}
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

    def forget_wait(self, i: int) -> None:
        """Drop what the run kept of closed wait ``i``."""
        self.deadlines.pop(i, None)
        self.infos.pop(i, None)
        self.kinds.pop(i, None)
        timer = self.wait_timers.pop(i, None)
        if timer is not None:
            timer.cancel()
        for topic, waiting in self.receivers.items():
            if i in waiting:
                waiting.remove(i)
                if not waiting:
                    del self.receivers[topic]
                break

    def after_wait(self, i: int, ticket: int, error: BaseException | None) -> None:
        self.forget_wait(i)
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
        """End the waits found past their deadline on restore (call from resume): sleeps
        succeed, other waits time out."""
        for i in self.expired:
            if self.states[i] is _S.WAITING:
                self.expire_wait(i)
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
                    f"the wait of atom {self.nodes[i].name!r} was abandoned: its"
                    " flow (or part) is reverting"
                )
                failure = Failure.from_exception(exc)
                self.set_atom(i, _S.FAILURE, {"failure": failure.to_dict()})
                self.results[i] = failure
                self.forget_wait(i)

    # Looking ---------------------------------------------------------------------------

    def waiting(self) -> tuple[Waiting, ...]:
        """The open waits, with their tokens (for the caller's :class:`Outcome` only)."""
        out = []
        for i, state in enumerate(self.states):
            if state is _S.WAITING:
                current = self.nonces[i]
                external = self.kinds.get(i, EXTERNAL) == EXTERNAL
                token = (
                    self.token_for(i, self.attempts[i])
                    if current is not None and external
                    else None
                )
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
        """The earliest deadline of an open wait or of an unfinished part with a deadline:
        when a resting flow must be woken."""
        found = [
            d for i, d in self.deadlines.items() if d is not None and self.states[i] is _S.WAITING
        ]
        found += [d for s, (_, d) in self.part_deadlines.items() if not self.part_done(s)]
        return min(found, default=None)


# The engine's half ------------------------------------------------------------------------


@dataclass(slots=True)
class _Parked:
    """A flow this engine ran that rests WAITING: what it needs to wake it."""

    graph: ExecGraph
    settled: anyio.Event = field(default_factory=anyio.Event)
    outcome: Outcome | None = None
    error: BaseException | None = None
    timer: Timer | None = None
    receives: bool = False
    """True when a receive of the flow waits: messages sent from elsewhere wake it."""
    following: _Parked | None = None
    """Where the flow rests next, when the wake-up of this one ended WAITING again."""


class ExternalWork:
    """Completion by token, messages, and waking the flows that rest WAITING (at their
    earliest deadline, through the engine's one timer).

    Completions and wake-ups in one engine go through one lock, and across engines through
    the journal's conditional append, so a wait is closed once and a flow wakes once.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._signer: Signer | None = None
        self._lock = anyio.Lock()
        self.parked: dict[str, _Parked] = {}
        self.rewake: dict[str, str | None] = {}  # flow id -> ref: wake once let go
        self._mail_cursor: int | None = None  # the newest message id looked at
        self._mail_polling = False

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
            if wait_kind(record.details) != EXTERNAL:
                raise InvalidTokenError(
                    f"atom {claim.atom!r} of flow {claim.flow_id} is not an external wait:"
                    " no token ends it"
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

    # Messages --------------------------------------------------------------------------

    async def send(
        self, flow_id: str, topic: str, message: Any, idempotency_key: str | None
    ) -> None:
        """Store ``message`` in the flow's mailbox, then see it delivered: by the run that
        is live here, by the owner elsewhere (which looks every :data:`MAIL_POLL`), or to
        a resting flow's waiting receive, now."""
        engine = self.engine
        journal = engine.journal
        async with engine._session():
            summary = await journal.summary(flow_id)  # NotFoundError for an unknown flow
            if summary.status in _ENDED:
                raise AioflowError(
                    f"flow {flow_id} has ended ({summary.status.value}): no receive of it"
                    f" will ever take a message on {topic!r}"
                )
            stored = await journal.post_message(
                flow_id, topic, message, key=idempotency_key, time=engine._clock()
            )
            if stored is None:
                return  # a second send with that idempotency key
            run = engine._live.get(flow_id)
            if run is not None and not run.status.is_resting:
                run.mail_arrived(topic)
                return
            await self.deliver_resting(flow_id)

    async def mark_mail(self) -> None:
        """Start looking at the mailbox from its newest message (once per engine): a
        flow run here later takes what came before through its receives as they open,
        and a cancel asked before through the taking of the flow (Engine._take)."""
        if self._mail_cursor is None:
            self._mail_cursor, _ = await self.engine.journal.mail_since(None)

    def watch_mail(self) -> None:
        """Look in the mailbox every :data:`MAIL_POLL` seconds (at most every ``lease /
        3``; real time: this is about other processes, whatever clock the engine's flows
        follow) while this entered engine runs flows or keeps resting ones with open
        receives: one query for all of them, on the message id, for messages to their
        receives and requests to cancel them."""
        tg = self.engine._tg
        if self._mail_polling or tg is None:
            return  # not entered: each run polls while it runs (Engine._drive)
        self._mail_polling = True
        try:
            tg.start_soon(self._poll_mail, name="aioflow mailbox")
        except RuntimeError:  # that run's group is closing: the next run starts it
            self._mail_polling = False

    def _mail_wanted(self) -> bool:
        return bool(self.engine._live) or any(parked.receives for parked in self.parked.values())

    def _poll_every(self) -> float:
        return min(MAIL_POLL, self.engine.lease / 3)

    async def _poll_mail(self) -> None:
        try:
            while self._mail_wanted():
                await anyio.sleep(self._poll_every())
                await self._look_safely()
        finally:
            self._mail_polling = False

    async def poll_mail(self, scope: anyio.CancelScope) -> None:
        """Look in the mailbox as :meth:`watch_mail` does, for a run of an engine that is
        not entered, until ``scope`` is cancelled."""
        with scope:
            while True:
                await anyio.sleep(self._poll_every())
                await self._look_safely()

    async def _look_safely(self) -> None:
        try:
            await self._look_for_mail()
        except Exception as exc:  # the store is away: look again later
            _LOG.warning("aioflow.mailbox_poll_failed", error=str(exc))

    async def _look_for_mail(self) -> None:
        engine = self.engine
        first = self._mail_cursor is None
        self._mail_cursor, found = await engine.journal.mail_since(self._mail_cursor)
        if first:  # what came before the cursor: every receive looks once more
            found = [(f, t) for f, run in engine._live.items() for t in run.receivers]
            found += [(f, "") for f, parked in self.parked.items() if parked.receives]
            found += [(f, CANCEL) for f in engine._live]
        for flow_id, topic in found:
            run = engine._live.get(flow_id)
            if topic == CANCEL:
                if run is not None or flow_id in self.parked:
                    await engine._cancel_here(flow_id)
            elif run is not None and not run.status.is_resting:
                run.mail_arrived(topic)
            elif flow_id in self.parked and self.parked[flow_id].receives:
                self.wake(flow_id, None)

    async def deliver_resting(self, flow_id: str) -> bool:
        """Give the waiting messages to the open receives of flow ``flow_id`` if it rests
        (oldest message to the receive that opened first), in one conditional append, so
        that concurrent deliverers in any process deliver each message once; wake the flow
        here if this engine can. True if something was delivered."""
        engine = self.engine
        journal = engine.journal
        for _ in range(_CONFLICT_RETRIES):
            state = replay(flow_id, await journal.load(flow_id))
            if not state.status.is_resting or state.status in _ENDED:
                return False  # running: its owner delivers (it looks every MAIL_POLL)
            waiting: dict[str, list[str]] = {}
            for name, record in state.atoms.items():
                if record.state is _S.WAITING and wait_kind(record.details) == RECEIVE:
                    waiting.setdefault(str(record.details.get("topic")), []).append(name)
            events: list[Event] = []
            seq = state.last_seq
            now = engine._clock()
            for topic, names in waiting.items():
                cursor = state.mail.get(topic, 0)
                for name in names:
                    got = await journal.next_message(flow_id, topic, cursor)
                    if got is None:
                        break
                    cursor = got[0]
                    seq += 1
                    record = state.atoms[name]
                    events.append(
                        Event(
                            flow_id,
                            seq,
                            now,
                            EventKind.ATOM,
                            name,
                            _S.SUCCESS,
                            record.attempt,
                            1.0,
                            {"result": got[1], "mail": [topic, got[0]]},
                        )
                    )
            if not events:
                return False
            if await journal.append_after(flow_id, state.last_seq, events):
                for event in events:
                    engine._publish(event)
                if state.status is FlowStatus.WAITING:
                    self.wake(flow_id, state.ref)
                return True
            if (await journal.summary(flow_id)).owner is not None:
                return False  # taken to run: the run takes its messages as it begins
        raise AioflowError(f"flow {flow_id} keeps changing; could not deliver its messages")

    # Resting and waking ----------------------------------------------------------------

    def rest(self, run: Run) -> None:
        """Remember a run that ended WAITING, so a completion or its deadline wakes it."""
        tg = self.engine._tg
        if tg is None:
            return
        old = self.parked.get(run.flow_id)
        parked = _Parked(run.graph, receives=bool(run.receivers))
        self.parked[run.flow_id] = parked
        if parked.receives:
            self.watch_mail()
        if old is not None and old.timer is not None:
            old.timer.cancel()
        deadline = run.next_deadline()
        if deadline is not None:
            parked.timer = self.engine._timers.add(deadline, self._due, run.flow_id, parked)

    def _due(self, flow_id: str, parked: _Parked) -> None:
        if self.parked.get(flow_id) is parked:
            self.wake(flow_id, None)

    def wake(self, flow_id: str, ref: str | None) -> None:
        """Resume a resting flow in the entered engine's background, once: the flow is
        held in the engine at once, so a ``resume`` called meanwhile joins this run."""
        engine = self.engine
        tg = engine._tg
        if tg is None:
            return
        if flow_id in engine._slots:
            # Held by a run of it that is ending (or a taking): wake it once let go.
            self.rewake[flow_id] = ref
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
        except FlowFailedError as exc:  # the flow ended, reverted: its outcome says why
            error = exc
            _LOG.info("aioflow.woken_flow_ended", flow_id=flow_id, status=exc.outcome.status.value)
        except Exception as exc:
            error = exc
            _LOG.warning("aioflow.wake_failed", flow_id=flow_id, error=str(exc))
        finally:
            slot.outcome, slot.error = outcome, error
            if parked is not None:
                following = self.parked.get(flow_id)
                parked.following = None if following is parked else following
            self.engine._let_go(flow_id, slot)
            if parked is not None:
                parked.outcome, parked.error = outcome, error
                parked.settled.set()

    async def _resume(self, flow_id: str, parked: _Parked | None) -> Outcome | None:
        engine = self.engine
        async with self._lock:
            if self.parked.get(flow_id) is parked and parked is not None:
                del self.parked[flow_id]
                if parked.timer is not None:
                    parked.timer.cancel()
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

    def follows(self, flow_id: str, parked: _Parked) -> bool:
        """True while the flow parked as ``parked`` has not ended through its waits."""
        while parked.settled.is_set():
            outcome = parked.outcome
            if parked.error is not None or outcome is None:
                return False
            if outcome.status is not FlowStatus.WAITING or parked.following is None:
                return False
            parked = parked.following
        return True

    async def through(
        self, outcome: Outcome, flow_id: str, parked: _Parked | None = None
    ) -> Outcome:
        """Follow a started flow that ended with ``outcome`` (parked as ``parked``, by
        default as it is now) through its waits."""
        while outcome.status is FlowStatus.WAITING:
            parked = parked or self.parked.get(flow_id)
            if parked is None:
                break
            await parked.settled.wait()
            if parked.error is not None:
                raise parked.error
            if parked.outcome is None:
                break
            outcome = parked.outcome
            parked = parked.following
            if parked is None:
                break
        return outcome
