"""The exceptions aioflow raises on purpose.

Every one derives from :class:`AioflowError`; where a builtin fits, it is a base too, so
``except ValueError`` keeps working for code that does not know aioflow::

    AioflowError
    ├── InvalidFlowError (ValueError)
    │   └── MissingInputsError
    ├── FlowFailedError
    ├── FlowMismatchError
    ├── NotFoundError (LookupError)
    ├── AmbiguousError (LookupError)
    ├── InvalidTokenError
    ├── ExternalTimeoutError (TimeoutError)
    ├── LeaseLostError
    ├── FlowBusyError
    ├── FlowCancelledError
    ├── FlowExistsError
    ├── JournalError
    └── SerializationError (TypeError)

Cancellation is never wrapped in any of these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._failure import Failure
    from ._outcome import Outcome


class AioflowError(Exception):
    """Raised for every error aioflow reports on purpose; the base of the tree."""


class InvalidFlowError(AioflowError, ValueError):
    """Raised when a flow cannot run as defined; found before anything runs.

    ``atoms`` names the atoms (and flows) involved.
    """

    def __init__(self, message: str, *, atoms: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.atoms: tuple[str, ...] = tuple(atoms)


class MissingInputsError(InvalidFlowError):
    """Raised when requirements are provided neither by the inputs nor by an earlier atom.

    ``missing`` maps each atom to the symbols it lacks.
    """

    def __init__(self, missing: Mapping[str, Sequence[str]]) -> None:
        self.missing: dict[str, tuple[str, ...]] = {a: tuple(s) for a, s in missing.items()}
        parts = [f"{atom!r} needs {', '.join(map(repr, syms))}" for atom, syms in missing.items()]
        symbols = sorted({s for syms in missing.values() for s in syms})
        super().__init__(
            f"missing inputs {', '.join(map(repr, symbols))}: " + "; ".join(parts),
            atoms=list(missing),
        )
        self.symbols: tuple[str, ...] = tuple(symbols)


class FlowFailedError(AioflowError):
    """Raised by ``run``/``resume`` when a flow failed and was reverted (or failed to revert).

    ``outcome`` is the final :class:`Outcome`; ``failures`` maps atom -> :class:`Failure`;
    ``__cause__`` is the first original exception when it is still in memory.
    """

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.failures: dict[str, Failure] = dict(outcome.failures)
        self.flow_id = outcome.flow_id
        shown = list(self.failures.items())[:3]
        summary = "; ".join(f"{atom}: {f.exc_type}: {f.message}" for atom, f in shown)
        if len(self.failures) > len(shown):
            summary += f"; and {len(self.failures) - len(shown)} more"
        super().__init__(
            f"flow {outcome.flow_id} ended {outcome.status.value}"
            + (f" after {summary}" if summary else "")
        )


class FlowMismatchError(AioflowError):
    """Raised when the flow given to resume is not the one the journal recorded.

    ``differences`` lists what differs, one line each.
    """

    def __init__(self, flow_id: str, differences: Sequence[str]) -> None:
        self.flow_id = flow_id
        self.differences = tuple(differences)
        super().__init__(
            f"flow {flow_id} does not match its journal: " + "; ".join(self.differences)
        )


class NotFoundError(AioflowError, LookupError):
    """Raised when a flow id, a registry entry or a job is not found."""


class AmbiguousError(AioflowError, LookupError):
    """Raised when a lookup that wants one match finds several; ``candidates`` names them."""

    def __init__(self, message: str, *, candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)


class InvalidTokenError(AioflowError):
    """Raised when an external-completion token is forged, stale or already used."""


class ExternalTimeoutError(AioflowError, TimeoutError):
    """Raised (as an atom's failure) when an external wait passes its deadline."""


class DeadlineExceededError(AioflowError, TimeoutError):
    """Raised (as a part's failure) when a part of a flow given ``timeout=`` runs past its
    deadline: its running atoms were cancelled, and its retry or the flow's revert
    follows as for any failure."""


class LeaseLostError(AioflowError):
    """Raised when an engine (or a conductor) writes for a flow (or job) that another
    owner has taken over since: its lease expired and the ownership moved on.

    ``flow_id`` names the flow when one is concerned.
    """

    def __init__(self, message: str, *, flow_id: str | None = None) -> None:
        super().__init__(message)
        self.flow_id = flow_id


class FlowBusyError(AioflowError):
    """Raised when a flow cannot be taken because a live engine owns it elsewhere.

    ``flow_id``, ``owner`` (that engine's id) and ``expires`` (when its lease ends, in
    seconds since the epoch, unless it renews it) say which and until when.
    """

    def __init__(self, flow_id: str, owner: str, expires: float | None) -> None:
        self.flow_id = flow_id
        self.owner = owner
        self.expires = expires
        until = ""
        if expires is not None:
            import datetime as _dt

            when = _dt.datetime.fromtimestamp(expires, _dt.UTC).isoformat(timespec="seconds")
            until = f" (its lease ends at {when} unless renewed)"
        super().__init__(
            f"flow {flow_id} is being run by engine {owner}{until}; it cannot be resumed "
            "here while that engine lives (wait for it with engine.wait(flow_id))"
        )


class FlowExistsError(AioflowError):
    """Raised by ``engine.run(..., flow_id=...)`` (and ``start``) for a flow id the
    journal already holds: resume that flow instead."""


class FlowCancelledError(AioflowError):
    """The failure a cancelled flow holds under the key ``"<cancel>"``: someone called
    ``engine.cancel(flow_id)`` (or cancelled its job), and the flow was reverted."""


class JournalError(AioflowError):
    """Raised when a journal cannot be opened, read or written: not a journal, another
    schema version, a conflicting writer, or a storage failure."""


class SerializationError(AioflowError, TypeError):
    """Raised when the codec cannot store a value; ``atom`` names whose value it was."""

    def __init__(self, message: str, *, atom: str | None = None) -> None:
        super().__init__(message)
        self.atom = atom
