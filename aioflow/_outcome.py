"""Outcome: what a run (or a resume) of a flow came to."""

from __future__ import annotations

from collections.abc import Mapping
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
    ``checkpoint`` reached and the open external ``waiting`` list."""

    flow_id: str
    status: FlowStatus
    results: Mapping[str, Any] = field(default_factory=dict)
    failures: Mapping[str, Failure] = field(default_factory=dict)
    atoms: Mapping[str, AtomOutcome] = field(default_factory=dict)
    checkpoint: str | None = None
    waiting: tuple[Waiting, ...] = ()

    def __getitem__(self, symbol: str) -> Any:
        try:
            return self.results[symbol]
        except KeyError:
            known = ", ".join(sorted(map(repr, self.results))) or "none"
            raise KeyError(
                f"flow {self.flow_id} published no symbol {symbol!r} (it has: {known})"
            ) from None
