"""Atom and flow states, and the one table of transitions allowed between them.

The engine moves state only through :func:`check_atom` / :func:`check_flow`; replay uses
the same tables, so a journal can never describe a move the engine would refuse.

Atom transitions (``*`` marks a move made only when a flow resumes after a crash or a
cancellation, or when a flow-level retry runs a part again)::

    PENDING   -> RUNNING | IGNORED
    RUNNING   -> SUCCESS | FAILURE | WAITING | PENDING* | RUNNING*
    WAITING   -> SUCCESS | FAILURE | PENDING*
    SUCCESS   -> REVERTING
    FAILURE   -> RETRYING | REVERTING
    RETRYING  -> RUNNING | REVERTING
    REVERTING -> REVERTED | REVERT_FAILURE | REVERTING*
    REVERTED  -> PENDING*
    IGNORED   -> PENDING*
    REVERT_FAILURE -> (final)

Flow transitions::

    PENDING   -> RUNNING
    RUNNING   -> SUCCESS | REVERTING | SUSPENDED | WAITING | RUNNING*
    REVERTING -> REVERTED | FAILED | SUSPENDED | REVERTING*
    SUSPENDED -> RUNNING | REVERTING
    WAITING   -> RUNNING | REVERTING | SUSPENDED
    SUCCESS, REVERTED, FAILED -> (final)
"""

from __future__ import annotations

import enum
from typing import Final


class AtomState(enum.Enum):
    """The state of one atom (a task, or an internal point such as a checkpoint)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRYING = "RETRYING"
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"
    REVERT_FAILURE = "REVERT_FAILURE"
    IGNORED = "IGNORED"

    # Members are singletons compared by identity: hashing by identity too makes every
    # table lookup of a state (the engine and replay do millions) a C-level operation.
    __hash__ = object.__hash__


class Atoms:
    """:class:`AtomState`'s members as plain class attributes, for the engine's hot
    paths: on Python 3.11 ``AtomState.RUNNING`` costs ~80 ns a lookup (the enum's
    metaclass), ``Atoms.RUNNING`` ~20 ns, and a step of a flow makes a dozen."""

    PENDING: Final = AtomState.PENDING
    RUNNING: Final = AtomState.RUNNING
    WAITING: Final = AtomState.WAITING
    SUCCESS: Final = AtomState.SUCCESS
    FAILURE: Final = AtomState.FAILURE
    RETRYING: Final = AtomState.RETRYING
    REVERTING: Final = AtomState.REVERTING
    REVERTED: Final = AtomState.REVERTED
    REVERT_FAILURE: Final = AtomState.REVERT_FAILURE
    IGNORED: Final = AtomState.IGNORED


class FlowStatus(enum.Enum):
    """The status of a whole flow."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    REVERTING = "REVERTING"
    REVERTED = "REVERTED"
    FAILED = "FAILED"
    SUSPENDED = "SUSPENDED"
    WAITING = "WAITING"

    __hash__ = object.__hash__  # as AtomState's

    @property
    def is_final(self) -> bool:
        """True for SUCCESS, REVERTED and FAILED: nothing more will happen to the flow."""
        return self in _FINAL_FLOW

    @property
    def is_resting(self) -> bool:
        """True when no engine is working on the flow: final, suspended or waiting."""
        return self in _RESTING_FLOW


_A = AtomState
_F = FlowStatus

ATOM_TRANSITIONS: dict[AtomState, frozenset[AtomState]] = {
    _A.PENDING: frozenset({_A.RUNNING, _A.IGNORED}),
    _A.RUNNING: frozenset({_A.SUCCESS, _A.FAILURE, _A.WAITING, _A.PENDING, _A.RUNNING}),
    _A.WAITING: frozenset({_A.SUCCESS, _A.FAILURE, _A.PENDING}),
    _A.SUCCESS: frozenset({_A.REVERTING}),
    _A.FAILURE: frozenset({_A.RETRYING, _A.REVERTING}),
    _A.RETRYING: frozenset({_A.RUNNING, _A.REVERTING}),
    _A.REVERTING: frozenset({_A.REVERTED, _A.REVERT_FAILURE, _A.REVERTING}),
    _A.REVERTED: frozenset({_A.PENDING}),
    _A.IGNORED: frozenset({_A.PENDING}),
    _A.REVERT_FAILURE: frozenset(),
}

FLOW_TRANSITIONS: dict[FlowStatus, frozenset[FlowStatus]] = {
    _F.PENDING: frozenset({_F.RUNNING}),
    _F.RUNNING: frozenset({_F.SUCCESS, _F.REVERTING, _F.SUSPENDED, _F.WAITING, _F.RUNNING}),
    _F.REVERTING: frozenset({_F.REVERTED, _F.FAILED, _F.SUSPENDED, _F.REVERTING}),
    _F.SUSPENDED: frozenset({_F.RUNNING, _F.REVERTING}),
    _F.WAITING: frozenset({_F.RUNNING, _F.REVERTING, _F.SUSPENDED}),
    _F.SUCCESS: frozenset(),
    _F.REVERTED: frozenset(),
    _F.FAILED: frozenset(),
}

_FINAL_FLOW = frozenset({_F.SUCCESS, _F.REVERTED, _F.FAILED})
_RESTING_FLOW = _FINAL_FLOW | {_F.SUSPENDED, _F.WAITING}


class IllegalTransitionError(RuntimeError):
    """Raised when code asks for a move the transition table forbids: always a bug."""


def check_atom(atom: str, old: AtomState, new: AtomState) -> None:
    """Raise :class:`IllegalTransitionError` unless ``old -> new`` is in the atom table."""
    if new not in ATOM_TRANSITIONS[old]:
        raise IllegalTransitionError(
            f"atom {atom!r}: illegal transition {old.value} -> {new.value}"
        )


def check_flow(flow_id: str, old: FlowStatus, new: FlowStatus) -> None:
    """Raise :class:`IllegalTransitionError` unless ``old -> new`` is in the flow table."""
    if new not in FLOW_TRANSITIONS[old]:
        raise IllegalTransitionError(
            f"flow {flow_id}: illegal transition {old.value} -> {new.value}"
        )
