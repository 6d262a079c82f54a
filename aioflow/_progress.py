"""Progress as the engine reports it: each atom's (:class:`AtomProgress`) and the whole
flow's, with its ETA (:class:`FlowProgress`).

What a task reports through goes the other way: :class:`~aioflow.Progress`, injected
into tasks, is in ``_handles.py``. Reporting is cheap and never awaits; the engine tells
listeners at once and keeps a throttled record in the journal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class AtomProgress:
    """How far one atom is: its state's name, fraction and details; while it runs, its
    observed ``rate`` (fraction per second since its attempt started); its ``weight`` in
    the flow's fraction (0.0 for checkpoints); and ``eta``, the seconds it is expected
    still to need (None when unknown or when the flow is not running)."""

    state: str
    fraction: float
    details: Mapping[str, Any] = field(default_factory=dict)
    rate: float | None = None
    weight: float = 1.0
    eta: float | None = None


@dataclass(frozen=True, slots=True)
class FlowProgress:
    """How far a whole flow is: the weighted ``fraction`` of its non-ignored atoms, each
    atom's progress, and an ``eta`` in seconds when one can be estimated (0.0 once the
    flow succeeded; None when it is not running). How the ETA is made is described in
    :mod:`aioflow._eta` and ``docs/progress.md``."""

    flow_id: str
    status: str
    fraction: float
    atoms: Mapping[str, AtomProgress]
    eta: float | None = None
