"""The engine's side of waits: completing a wait by token, sending messages, and waking
the flows that rest WAITING.

A run's own waits (open waits, their deadlines and timers, the receives' mailbox
cursor) are :class:`aioflow._kernel.waits.Waits`; the handles a task uses to wait
(:class:`~aioflow.External`, :class:`WaitRequest`) are in ``_handles.py``. What is here
acts on flows wherever they are: live in this engine, resting in the journal, or running
elsewhere (:class:`ExternalWork`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from ._codec import Encoded, size_hint
from ._errors import (
    AioflowError,
    FlowBusyError,
    FlowFailedError,
    InvalidTokenError,
    NotFoundError,
    SerializationError,
)
from ._events import Event, EventKind
from ._failure import CANCEL, Failure
from ._handles import EXTERNAL, RECEIVE
from ._kernel.waits import as_failure, wait_fields, wait_kind
from ._log import get_logger
from ._replay import replay
from ._states import Atoms, FlowStatus
from ._tokens import SECRET_META_KEY, Claim, Signer, new_secret, secret_from
from ._values import encode_large, measure_from
from .journal._base import encode_message

if TYPE_CHECKING:

    from ._compile import ExecGraph
    from ._engine import Engine
    from ._kernel import Run
    from ._outcome import Outcome
    from ._timers import Timer
    from .journal import FlowSummary

_S = Atoms
_LOG = get_logger("aioflow")
_CONFLICT_RETRIES = 20
_ENDED = (FlowStatus.SUCCESS, FlowStatus.REVERTED, FlowStatus.FAILED)
MAIL_POLL = 1.0
"""Seconds between looks for messages that other processes sent to a flow running here
while one of its receives waits (sends made through this engine need no look)."""


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
                        ticket = run.waits.complete_wait(claim, result, exc, encoded)
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
            await self._check_size(flow_id, topic, message)
            stored = await journal.post_message(
                flow_id, topic, message, key=idempotency_key, time=engine._clock()
            )
            if stored is None:
                return  # a second send with that idempotency key
            run = engine._live.get(flow_id)
            if run is not None and not run.status.is_resting:
                run.waits.mail_arrived(topic)
                return
            await self.deliver_resting(flow_id)

    async def _check_size(self, flow_id: str, topic: str, message: Any) -> None:
        """Refuse a message beyond the engine's ``max_value_bytes`` (SerializationError,
        nothing stored): a receive's result is held to the limit any result is."""
        limit = self.engine.max_value_bytes
        if limit is None:
            return
        hint = size_hint(message)
        if hint is not None and hint < measure_from(limit):
            return  # surely small enough: no need to encode it twice
        text = await encode_message(self.engine.journal.codec, flow_id, topic, message)
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise SerializationError(
                f"a message on topic {topic!r} for flow {flow_id} is {size} bytes, beyond the"
                f" engine's max_value_bytes ({limit}); send a reference to it instead"
            )

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
            found = [(f, t) for f, run in engine._live.items() for t in run.waits.receivers]
            found += [(f, "") for f, parked in self.parked.items() if parked.receives]
            found += [(f, CANCEL) for f in engine._live]
        for flow_id, topic in found:
            run = engine._live.get(flow_id)
            if topic == CANCEL:
                if run is not None or flow_id in self.parked:
                    await engine._cancel_here(flow_id)
            elif run is not None and not run.status.is_resting:
                run.waits.mail_arrived(topic)
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
        parked = _Parked(run.compiled, receives=bool(run.waits.receivers))
        self.parked[run.flow_id] = parked
        if parked.receives:
            self.watch_mail()
        if old is not None and old.timer is not None:
            old.timer.cancel()
        deadline = run.waits.next_deadline()
        if deadline is not None:
            parked.timer = self.engine._timers.add(deadline, self._due, run.flow_id, parked)

    def _due(self, flow_id: str, parked: _Parked) -> None:
        if self.parked.get(flow_id) is parked:
            self.wake(flow_id, None)

    def resting(self, flow_id: str) -> _Parked | None:
        """What this engine keeps of flow ``flow_id`` while it rests WAITING (None when it
        does not rest here)."""
        return self.parked.get(flow_id)

    def let_go(self, flow_id: str) -> None:
        """The engine let go of flow ``flow_id``: wake it now if a completion or a message
        came while it was held (see :meth:`wake`)."""
        if flow_id in self.rewake:
            self.wake(flow_id, self.rewake.pop(flow_id))

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
            run.waits.signer = await self.signer()
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
