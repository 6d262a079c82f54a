"""Hypothesis strategies for aioflow's property tests.

A :class:`DagSpec` is a plain description of a random flow: tasks ``0..n-1`` where task
``i`` provides symbol ``s{i}``, needs some ``s{j}`` with ``j < i`` (the data edges) and is
linked after some other ``j < i`` (the explicit edges). It knows what a sequential
evaluation gives and which tasks must finish before which, so the tests can compare the
engine against it. Building the actual aioflow objects is left to the tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

from hypothesis import strategies as st

from aioflow import AtomState, Event, EventKind

# How a spec is laid out as a flow tree:
#   "graph"       Graph("g", t0..tn-1) with the links
#   "graph+final" Linear("root", Graph("g", ...), final) where final needs every sink
#   "chunks"      Linear("root", chunk0, chunk1, ..., final): consecutive index ranges, each
#                 a Linear, an Unordered (only when nothing inside depends on anything
#                 inside) or a Graph (keeping the links inside it)
LAYOUTS = ("graph", "graph+final", "chunks")
CHUNK_KINDS = ("linear", "unordered", "graph")

# 0.0 means "just yield" (anyio.sleep(0)).
DELAYS = (0.0, 0.0, 0.0, 0.0005, 0.001, 0.002)


@dataclass(frozen=True)
class Chunk:
    """Tasks ``start..stop-1`` grouped in one sub-flow of kind ``kind``."""

    kind: str
    start: int
    stop: int

    @property
    def members(self) -> range:
        return range(self.start, self.stop)


@dataclass(frozen=True)
class DagSpec:
    """A random DAG of tasks and how to lay it out and run it."""

    data: tuple[tuple[int, ...], ...]
    """``data[i]``: the tasks whose symbols task ``i`` requires (all ``< i``)."""
    links: tuple[tuple[int, int], ...]
    """Explicit ``link(j, i)`` edges, ``j < i``."""
    delays: tuple[float, ...]
    """How long task ``i`` sleeps (0.0: it only yields)."""
    layout: str = "graph"
    chunks: tuple[Chunk, ...] = ()
    max_concurrency: int | None = None
    failing: frozenset[int] = frozenset()
    """Tasks that raise instead of returning."""

    @property
    def n(self) -> int:
        return len(self.data)

    @property
    def has_final(self) -> bool:
        """True when a task named ``final`` consumes every sink."""
        return self.layout != "graph"

    @cached_property
    def deps(self) -> tuple[frozenset[int], ...]:
        """Direct dependencies of each task: data edges and links."""
        out = [set(d) for d in self.data]
        for j, i in self.links:
            out[i].add(j)
        return tuple(frozenset(s) for s in out)

    @cached_property
    def dependents(self) -> tuple[frozenset[int], ...]:
        out: list[set[int]] = [set() for _ in range(self.n)]
        for i, ds in enumerate(self.deps):
            for j in ds:
                out[j].add(i)
        return tuple(frozenset(s) for s in out)

    @cached_property
    def sinks(self) -> tuple[int, ...]:
        """Tasks nothing depends on (by data or link)."""
        return tuple(i for i in range(self.n) if not self.dependents[i])

    @cached_property
    def expected(self) -> tuple[int, ...]:
        """What each task returns when the flow is evaluated sequentially in index order."""
        values: list[int] = []
        for i in range(self.n):
            values.append(i + sum(values[j] for j in self.data[i]))
        return tuple(values)

    @property
    def expected_final(self) -> int:
        return sum(self.expected[i] for i in self.sinks)

    @cached_property
    def must_precede(self) -> tuple[frozenset[int], ...]:
        """For each task, the tasks that must have ended before it starts: its direct
        dependencies plus, in the ``chunks`` layout, whatever the Linear order adds."""
        out = [set(d) for d in self.deps]
        if self.layout == "chunks":
            done: set[int] = set()
            for chunk in self.chunks:
                previous: int | None = None
                for i in chunk.members:
                    out[i] |= done
                    if chunk.kind == "linear" and previous is not None:
                        out[i].add(previous)
                    previous = i
                done.update(chunk.members)
        return tuple(frozenset(s) for s in out)

    def ancestors(self, i: int) -> frozenset[int]:
        """Every task ``i`` (transitively) waits for."""
        seen: set[int] = set()
        stack = list(self.must_precede[i])
        while stack:
            j = stack.pop()
            if j not in seen:
                seen.add(j)
                stack.extend(self.must_precede[j])
        return frozenset(seen)


def _inside(chunk: Chunk, deps: tuple[frozenset[int], ...]) -> bool:
    """True when some member of ``chunk`` depends on another member."""
    return any(j >= chunk.start for i in chunk.members for j in deps[i])


@st.composite
def dags(
    draw: st.DrawFn,
    *,
    min_tasks: int = 1,
    max_tasks: int = 25,
    layouts: tuple[str, ...] = LAYOUTS,
    failures: bool = False,
) -> DagSpec:
    """A random :class:`DagSpec`. With ``failures``, at least one task raises."""
    n = draw(st.integers(min_tasks, max_tasks), label="tasks")
    data = tuple(
        tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4))) if i else ()))
        for i in range(n)
    )
    links: list[tuple[int, int]] = []
    if n > 1:
        raw = draw(
            st.lists(
                st.integers(1, n - 1).flatmap(
                    lambda i: st.tuples(st.integers(0, i - 1), st.just(i))
                ),
                max_size=min(5, n),
                unique=True,
            )
        )
        links = sorted(raw)
    delays = tuple(draw(st.lists(st.sampled_from(DELAYS), min_size=n, max_size=n)))
    layout = draw(st.sampled_from(layouts), label="layout")
    chunks: list[Chunk] = []
    spec_deps = DagSpec(data, tuple(links), delays).deps
    if layout == "chunks":
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=min(6, n - 1))) if n > 1 else ())
        bounds = [0, *cuts, n]
        for start, stop in itertools.pairwise(bounds):
            kind = draw(st.sampled_from(CHUNK_KINDS))
            chunk = Chunk(kind, start, stop)
            if kind == "unordered" and _inside(chunk, spec_deps):
                chunk = Chunk("graph", start, stop)
            chunks.append(chunk)
    max_concurrency = draw(st.one_of(st.none(), st.integers(1, 4)), label="max_concurrency")
    failing: frozenset[int] = frozenset()
    if failures:
        failing = frozenset(
            draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=max(1, n // 3)))
        )
    return DagSpec(
        data=data,
        links=tuple(links),
        delays=delays,
        layout=layout,
        chunks=tuple(chunks),
        max_concurrency=max_concurrency,
        failing=failing,
    )


def draw_index(data: st.DataObject, n: int, label: str) -> int:
    """An index in ``1..n`` whose draw does not depend on ``n``: a run whose tasks fail
    ends after a number of events that timing decides, and Hypothesis must see the same
    draws each time it replays an example."""
    return 1 + data.draw(st.integers(0, 2**16), label=label) % n


def cut_journal(data: st.DataObject, events: list[Event]) -> tuple[list[Event], set[str]]:
    """A journal cut where a crash might have left it: a prefix of ``events`` drawn by
    :func:`draw_index`, and the atoms whose success that prefix holds."""
    prefix = events[: draw_index(data, len(events), "cut")]
    committed = {
        str(e.atom) for e in prefix if e.kind is EventKind.ATOM and e.state is AtomState.SUCCESS
    }
    return prefix, committed
