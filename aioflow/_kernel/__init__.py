"""The run kernel: one run of a compiled flow, in rooms that each own their state.

- :mod:`.run`: :class:`Run`, the scheduler the engine drives: the per-atom state arrays,
  the events it journals, releasing atoms as their predecessors finish (in-degree
  counters), executing them (on asyncio in *workers*, see :meth:`Run.spawn`), progress,
  and restoring a run from the journal. It holds the other rooms.
- :mod:`.reverting`: :class:`Reverter` (``run.reverter``): which part a failure
  reverts, revert groups (dependents first), the retries of parts, part deadlines.
- :mod:`.waits`: :class:`Waits` (``run.waits``): open waits (tokens, sleeps, receives),
  their deadlines and timers, the flow's mailbox cursor.

The task-facing handles (``Progress``, ``External``, ``TaskContext``, ``WaitRequest``)
are in ``aioflow/_handles.py``; the engine's side of waits (completing by token while a
flow rests, messages, waking) is ``aioflow/_external.py``. See docs/architecture.md.
"""

from .run import Run

__all__ = ["Run"]
