"""Outcome: what a run (or a resume) of a flow came to."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._failure import Failure
from ._states import AtomState, FlowStatus


@dataclass(frozen=True, slots=True)
class AtomOutcome:
    """One atom at the end of a run: its state, result, progress and how often it ran."""

    state: AtomState
    result: Any = None
    progress: float = 0.0
    attempts: int = 0
    failure: Failure | None = None


class AtomOutcomes(Mapping[str, AtomOutcome]):
    """Every atom's :class:`AtomOutcome`, made when asked for: a run of 100k atoms need not
    build 100k records that its caller may never read.

    ``index`` maps each atom's name to its place in the other sequences, which the
    mapping owns (the run hands over copies)."""

    __slots__ = ("_attempts", "_index", "_progress", "_results", "_states")

    def __init__(
        self,
        index: Mapping[str, int],
        states: Sequence[AtomState],
        results: Sequence[Any],
        progress: Sequence[float],
        attempts: Sequence[int],
    ) -> None:
        self._index = index
        self._states = states
        self._results = results
        self._progress = progress
        self._attempts = attempts

    def __getitem__(self, name: str) -> AtomOutcome:
        i = self._index[name]
        result = self._results[i]
        if isinstance(result, Failure):
            return AtomOutcome(self._states[i], None, self._progress[i], self._attempts[i], result)
        return AtomOutcome(self._states[i], result, self._progress[i], self._attempts[i])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass(frozen=True, slots=True)
class Waiting:
    """An open external wait: the atom, its token (a bearer secret), deadline and info."""

    atom: str
    token: str = field(repr=False)
    deadline: float | None
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a run: ``status``, the published ``results`` (``outcome[symbol]``),
    ``failures`` (atom -> :class:`Failure`), every atom's :class:`AtomOutcome`, the last
    ``checkpoint`` reached, the open external ``waiting`` list, and who runs the flow
    (``owner``, ``orphaned``)."""

    flow_id: str
    status: FlowStatus
    results: Mapping[str, Any] = field(default_factory=dict)
    failures: Mapping[str, Failure] = field(default_factory=dict)
    atoms: Mapping[str, AtomOutcome] = field(default_factory=dict)
    checkpoint: str | None = None
    waiting: tuple[Waiting, ...] = ()
    owner: str | None = None
    """The engine that owns the flow now (None once it rests: a resting flow has none)."""
    orphaned: bool = False
    """True for a RUNNING or REVERTING flow that no live engine owns (see ``resume``)."""

    def __getitem__(self, symbol: str) -> Any:
        try:
            return self.results[symbol]
        except KeyError:
            known = ", ".join(sorted(map(repr, self.results))) or "none"
            raise KeyError(
                f"flow {self.flow_id} published no symbol {symbol!r} (it has: {known})"
            ) from None
