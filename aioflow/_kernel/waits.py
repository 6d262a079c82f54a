"""The run's waits: atoms that rest until a token, a deadline or a message ends them.

A task hands its work to an outside system and returns ``external.wait(...)`` (or is a
``Sleep`` or a ``Receive``): its atom rests WAITING, the ATOM event carrying the deadline,
what ends the wait and its info, never a token, until a signed token completes or fails
it, its deadline passes, or a message is taken. :class:`Waits` is that part of a run;
the engine's part (completing by token when the flow rests, sending messages, waking
resting flows) is :class:`aioflow._external.ExternalWork`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from .._codec import Encoded
from .._errors import AioflowError, ExternalTimeoutError, InvalidTokenError
from .._failure import Failure
from .._handles import EXTERNAL, RECEIVE, SLEEP, WaitRequest
from .._outcome import Waiting
from .._replay import AtomRecord
from .._states import Atoms
from .._tokens import Claim, Signer, new_nonce

if TYPE_CHECKING:
    from .._timers import Timer
    from .run import Run

__all__ = ["Waits", "as_failure", "timeout_failure", "wait_fields", "wait_kind"]

_S = Atoms


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


class Waits:
    """The run's waits: open waits (external, sleeps, receives) with their nonces,
    deadlines and timers, the mailbox cursor of the flow's receives, and what follows a
    wait that closes. One per :class:`~aioflow._kernel.run.Run`, which holds it as
    ``run.waits``."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.signer: Signer | None = None
        n = len(self.run.nodes)
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

    def grow(self, n: int) -> None:
        """Room for ``n`` nodes appended to the run's graph (see ``Run.grow``)."""
        self.nonces.extend([None] * n)
        self._by_name = None

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
        return self.signer.issue(self.run.flow_id, self.run.nodes[i].name, attempt, nonce)

    def open_wait(self, i: int, request: WaitRequest) -> None:
        """Rest atom ``i`` WAITING (journaled with its deadline and what ends it, never a
        token)."""
        if request.until is not None:
            deadline: float | None = request.until
        elif request.timeout is not None:
            deadline = self.run.clock() + request.timeout
        else:
            deadline = None
        info = dict(request.info)
        nonce = self.nonce_for(i, self.run.attempts[i])
        details: dict[str, Any] = {"deadline": deadline, "info": info, "nonce": nonce}
        if request.kind != EXTERNAL:
            details["kind"] = request.kind
        if request.topic is not None:
            details["topic"] = request.topic
        self.run.set_atom(i, _S.WAITING, details)
        self.deadlines[i] = deadline
        self.infos[i] = info
        self.kinds[i] = request.kind
        early = self.early.pop(i, None)
        if early is not None:
            self.close_wait(i, *early)
            return
        if deadline is not None and self.run.tg is not None:
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
            attempt = self.run.attempts[i]
            self.wait_timers[i] = self.run.timers.add(deadline, self.wait_due, i, attempt)

    def wait_due(self, i: int, attempt: int) -> None:
        self.wait_timers.pop(i, None)
        run = self.run
        if run.states[i] is _S.WAITING and run.attempts[i] == attempt and not run.cancelled:
            self.expire_wait(i)

    def expire_wait(self, i: int) -> None:
        """Wait ``i`` reached its deadline: a sleep ends with success, another wait fails
        with ExternalTimeoutError."""
        kind = self.kinds.get(i, EXTERNAL)
        if kind == SLEEP:
            self.close_wait(i, None, None)
        else:
            _, exc = timeout_failure(self.run.nodes[i].name, self.deadlines.get(i), kind)
            self.close_wait(i, None, exc)

    def idle_waits(self) -> None:
        """Call off the timers when nothing but waits is left (from ``check_idle``)."""
        if self.run.running == 0 and self.wait_timers:
            self.stop_timers()

    def stop_timers(self) -> None:
        for timer in self.wait_timers.values():
            timer.cancel()
        self.wait_timers.clear()

    def arm_waits(self) -> None:
        """Start the timers of the waits restored from the journal, and look for the
        messages their receives wait for (call from ``begin``)."""
        for i, deadline in self.deadlines.items():
            if deadline is not None and self.run.states[i] is _S.WAITING:
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
        if deadline is not None and self.run.clock() >= deadline:
            self.expired.append(i)

    # Messages --------------------------------------------------------------------------

    async def take_mail(self, topic: str) -> tuple[int, Any, int] | None:
        """The next message on ``topic`` this flow has not taken, reserved for the caller
        (the cursor moves at once, so two receives never take the same one): its id, its
        value and where the cursor stood before."""
        while True:
            cursor = self.mail.get(topic, 0)
            seen = self.mail_seen
            got = await self.run.journal.next_message(self.run.flow_id, topic, cursor)
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
        if topic in self.fetching or self.run.tg is None or self.run.cancelled:
            return
        self.fetching.add(topic)
        self.run.running += 1
        try:
            self.run.tg.start_soon(self.deliver, topic, name=f"mail {topic}")
        except RuntimeError:  # the run is ending: the engine looks once it rests
            self.fetching.discard(topic)
            self.run.running -= 1

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
            self.run.running -= 1
            if self.run.running == 0:
                self.run.reverter.check_idle()

    # Closing ---------------------------------------------------------------------------

    def index_of(self, atom: str) -> int | None:
        if self._by_name is None:
            self._by_name = {node.name: node.index for node in self.run.nodes}
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
            raise InvalidTokenError(f"flow {self.run.flow_id} has no atom {claim.atom!r}")
        current = self.nonces[i]
        if self.run.attempts[i] != claim.attempt or current is None or current[1] != claim.nonce:
            raise InvalidTokenError(
                f"the token of atom {claim.atom!r} is for an attempt that has ended"
            )
        state = self.run.states[i]
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
        if deadline is not None and self.run.clock() >= deadline:
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
        node = self.run.nodes[i]
        if error is None:
            try:
                value = self.run.published(node, result)
            except Exception as exc:
                error = exc
            else:
                details: Mapping[str, Any]
                if mail is not None:
                    details = {"result": result, "mail": list(mail)}
                else:
                    details = {"result": result} if encoded is None else encoded
                ticket = self.run.set_atom(i, _S.SUCCESS, details)
                self.run.results[i] = result
                self.run.values[i] = value
                self.after_wait(i, ticket, None)
                return ticket
        failure = Failure.from_exception(error)
        ticket = self.run.set_atom(i, _S.FAILURE, {"failure": failure.to_dict()})
        self.run.results[i] = failure
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
        self.run.running += 1
        for s in self.run.nodes[i].scopes:
            self.run.scope_running[s] += 1
        if self.run.tg is None:
            self.wakes.append((i, ticket, error))
        else:
            self.run.tg.start_soon(self.go_on, i, ticket, error, name=self.run.nodes[i].name)

    def start_wakes(self) -> None:
        """Start what follows the waits closed before the run began (call from ``begin``)."""
        assert self.run.tg is not None
        for i, ticket, error in self.wakes:
            self.run.tg.start_soon(self.go_on, i, ticket, error, name=self.run.nodes[i].name)
        self.wakes.clear()

    def expire_waits(self) -> None:
        """End the waits found past their deadline on restore (call from resume): sleeps
        succeed, other waits time out."""
        for i in self.expired:
            if self.run.states[i] is _S.WAITING:
                self.expire_wait(i)
        self.expired.clear()

    async def go_on(self, i: int, ticket: int, error: BaseException | None) -> None:
        """After a wait closed: release its successors, or retry it, or fail the flow."""
        node = self.run.nodes[i]
        try:
            if error is not None:
                await self.retry_or_fail(i, error)
                return
            if node.succs and not self.run.failing:
                if self.run.strict:
                    await self.run.journal.wait_durable(ticket)
                self.run.release(i)
            self.run.spawn()
        except anyio.get_cancelled_exc_class():
            self.run.cancelled = True
            raise
        finally:
            self.run.atom_ended(i)

    async def retry_or_fail(self, i: int, exc: BaseException) -> None:
        node = self.run.nodes[i]
        delay = self.run.plan_retry(i, exc)
        if delay is not None:
            if delay > 0:
                await self.run.sleep(delay)
            if not self.run.halted(node):
                await self.run.execute(i)
                return
        self.run.reverter.fail(node, Failure.from_exception(exc), exc)

    def abandon_waits(self, indices: list[int] | None = None) -> None:
        """Fail the open waits (of ``indices``, or all) because their part is reverting;
        the revert then receives that failure as ``result``."""
        for i in range(len(self.run.nodes)) if indices is None else indices:
            if self.run.states[i] is _S.WAITING:
                exc = AioflowError(
                    f"the wait of atom {self.run.nodes[i].name!r} was abandoned: its"
                    " flow (or part) is reverting"
                )
                failure = Failure.from_exception(exc)
                self.run.set_atom(i, _S.FAILURE, {"failure": failure.to_dict()})
                self.run.results[i] = failure
                self.forget_wait(i)

    # Looking ---------------------------------------------------------------------------

    def waiting(self) -> tuple[Waiting, ...]:
        """The open waits, with their tokens (for the caller's :class:`Outcome` only)."""
        if _S.WAITING not in self.run.states:  # most runs: one scan in C, not in Python
            return ()
        out = []
        for i, state in enumerate(self.run.states):
            if state is _S.WAITING:
                current = self.nonces[i]
                external = self.kinds.get(i, EXTERNAL) == EXTERNAL
                token = (
                    self.token_for(i, self.run.attempts[i])
                    if current is not None and external
                    else None
                )
                out.append(
                    Waiting(
                        self.run.nodes[i].name,
                        token or "",
                        self.deadlines.get(i),
                        dict(self.infos.get(i, {})),
                    )
                )
        return tuple(out)

    def next_deadline(self) -> float | None:
        """The earliest deadline of an open wait or of an unfinished part with a deadline:
        when a resting flow must be woken."""
        states = self.run.states
        found = [
            d for i, d in self.deadlines.items() if d is not None and states[i] is _S.WAITING
        ]
        reverter = self.run.reverter
        found += [d for s, (_, d) in reverter.part_deadlines.items() if not reverter.part_done(s)]
        return min(found, default=None)
