"""Maps: a member copied once per element of a sequence known only at run time.

A Map compiles to a *controller* (an atom named like the Map, kind MAP) and a
*collector* (a join right after it, index controller + 1); its member is compiled once
as a template (:class:`~aioflow._compile.MapSpec`). When the controller is ready it
reads the sequence, journals its length as its result, and grows the run's graph by one
copy of the template per element: copy ``i`` is named ``name[i]`` (``name[i].atom`` for
the atoms of a flow member), reads element ``i`` as its item, and comes before the
collector, which publishes the copies' results as a list once all have finished.

Everything else is the scheduler's as for any atom: each copy runs, retries, waits and
reverts on its own, and a resume grows the same copies from the journaled length before
it restores them, so the sequence is never read again. ``max_parallel`` is a *gate*: a
copy's first atoms start only while fewer than that many copies are under way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._compile import BARRIER, INPUT, ITEM, OUTER, MapSpec, Node, RetryScope
from .._failure import Failure
from .._replay import EXPANDED
from .._states import Atoms
from .reverting import FINISHED as _FINISHED

if TYPE_CHECKING:
    from .._replay import AtomRecord
    from .run import Run

_S = Atoms


class _Gate:
    """``max_parallel`` of one Map: the copies under way, and those waiting to start
    (copy -> its first atoms that are ready), in order."""

    __slots__ = ("active", "admitted", "limit", "waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.admitted: set[int] = set()
        self.waiting: dict[int, list[int]] = {}

    def clear(self) -> None:
        self.active = 0
        self.admitted.clear()
        self.waiting.clear()


class _Instance:
    """One Map in one run: its controller, where each copy's nodes begin, and its gate."""

    __slots__ = ("bases", "controller", "gate", "spec")

    def __init__(self, spec: MapSpec, controller: int) -> None:
        self.spec = spec
        self.controller = controller
        self.bases: list[int] = []
        self.gate = None if spec.max_parallel is None else _Gate(spec.max_parallel)


class Mapper:
    """The Maps of a :class:`~aioflow._kernel.run.Run` (``run.mapper``): expanding them,
    gating them and collecting their results."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.instances: dict[int, _Instance] = {}
        # Node -> (gate, copy): a copy's first atoms, and its end (where it is done).
        self.gated: dict[int, tuple[_Gate, int]] = {}
        self.gate_ends: dict[int, tuple[_Gate, int]] = {}

    # Expanding ---------------------------------------------------------------------------

    def expand(self, c: int) -> bool:
        """Run controller ``c``: read its sequence, journal its length, grow a copy of
        the member per element. False when the sequence is no sequence (the controller
        fails with a TypeError)."""
        run = self.run
        node = run.nodes[c]
        run.attempts[c] += 1
        run.set_atom(c, _S.RUNNING)
        try:
            sequence = self.sequence(node)
        except TypeError as exc:
            failure = Failure.from_exception(exc)
            run.set_atom(c, _S.FAILURE, {"failure": failure.to_dict()})
            run.reverter.fail(node, failure, exc)
            return False
        self.grow_to(c, len(sequence))
        run.set_atom(c, _S.SUCCESS, {"result": len(sequence)})
        run.results[c] = len(sequence)
        run.values[c] = sequence
        return True

    def grow_to(self, c: int, count: int) -> None:
        """Make controller ``c`` lead to its first ``count`` copies (grown if need be),
        and its collector wait for them."""
        run = self.run
        instance = self.instances.get(c)
        if instance is None:
            spec = run.nodes[c].mapping
            assert spec is not None
            instance = self.instances[c] = _Instance(spec, c)
        if instance.gate is not None:
            instance.gate.clear()
        had = len(instance.bases)
        if count > had:
            self.grow(instance, had, count)
        if count < had or had:  # grown before (a part run again): wire what runs now
            self.wire(instance, count)

    def grow(self, instance: _Instance, first: int, count: int) -> None:
        """Append copies ``first`` to ``count - 1`` of ``instance`` to the run's graph."""
        run = self.run
        spec, c = instance.spec, instance.controller
        k = c + 1
        controller = run.nodes[c]
        base = len(run.nodes)
        scope_base = len(run.graph.scopes)
        size = len(spec.nodes) + (0 if spec.task else 1)  # a flow's copy ends in a join
        nodes: list[Node] = []
        scopes: list[RetryScope] = []
        ends = []
        # Equal tuples are shared between copies, as the compiler shares them: (c,), (k,).
        shared: dict[tuple[int, ...], tuple[int, ...]] = {}
        exits = frozenset(spec.exits)
        for i in range(first, count):
            instance.bases.append(base)
            nodes.extend(self.copy(instance, controller, i, base, scope_base, shared, exits))
            if spec.scopes:
                scopes.extend(self.copy_scopes(instance, controller, i, base, scope_base))
            end = base if spec.task else base + size - 1
            ends.append(end)
            if instance.gate is not None:
                for r in spec.roots:
                    self.gated[base + r] = (instance.gate, i)
                self.gate_ends[end] = (instance.gate, i)
            base += size
            scope_base += len(spec.scopes)
        run.grow(nodes, scopes, controller.scopes)
        collector = run.nodes[k]
        run.nodes[k] = dataclasses.replace(collector, preds=(*collector.preds, *ends))
        run.indegree[k] += len(ends)

    def wire(self, instance: _Instance, count: int) -> None:
        """Lead controller and collector to the first ``count`` copies only (a part run
        again over a shorter sequence leaves the copies past it PENDING, unreachable)."""
        run = self.run
        spec, c = instance.spec, instance.controller
        k = c + 1
        roots = [b + r for b in instance.bases[:count] for r in spec.roots]
        ends = [self.end(instance, i) for i in range(count)]
        run.nodes[c] = dataclasses.replace(run.nodes[c], succs=(k, *roots))
        run.nodes[k] = dataclasses.replace(run.nodes[k], preds=(c, *ends))
        states = run.states
        run.indegree[k] = sum(1 for p in (c, *ends) if states[p] not in _FINISHED)

    def end(self, instance: _Instance, i: int) -> int:
        """The node whose end is the end of copy ``i``."""
        base = instance.bases[i]
        return base if instance.spec.task else base + len(instance.spec.nodes)

    def copy(
        self,
        instance: _Instance,
        controller: Node,
        i: int,
        base: int,
        scope_base: int,
        shared: dict[tuple[int, ...], tuple[int, ...]],
        exits: frozenset[int],
    ) -> list[Node]:
        """The nodes of copy ``i``: the template moved to ``base``, renamed, its inputs
        resolved (its item is element ``i`` of the controller's sequence)."""
        spec, c = instance.spec, controller.index
        k = c + 1
        prefix = f"{spec.name}[{i}]"
        around = controller.scopes
        out: list[Node] = []
        end = base + len(spec.nodes)
        after = (k,) if spec.task else (end,)
        for t in spec.nodes:
            index = base + t.index
            if t.kind == BARRIER and t.mapping is None:
                name = f"<join {index}>"
            elif t.kind == BARRIER:
                name = f"<collect {prefix}{spec.suffixes[t.index - 1]}>"
            else:
                name = prefix + spec.suffixes[t.index]
            preds = tuple([base + p for p in t.preds]) if t.preds else (c,)
            succs = (
                tuple([base + s for s in t.succs]) + after
                if t.index in exits
                else (tuple([base + s for s in t.succs]))
            )
            scopes = around + tuple([scope_base + s for s in t.scopes]) if t.scopes else around
            mapping = t.mapping
            if mapping is not None and t.kind != BARRIER:
                outer = {
                    s: self.moved(p, key, instance, i, base)
                    for s, (p, key) in mapping.outer.items()
                }
                mapping = dataclasses.replace(mapping, name=name, outer=outer)
            elif mapping is not None:
                mapping = out[-1].mapping  # a collector follows its controller
            args = (
                tuple(
                    [
                        (param, *self.moved(p, symbol, instance, i, base))
                        for param, p, symbol in t.args
                    ]
                )
                if t.args
                else ()
            )
            out.append(
                Node(
                    index,
                    name,
                    t.kind,
                    shared.setdefault(preds, preds),
                    t.task,
                    t.checkpoint,
                    args,
                    shared.setdefault(succs, succs),
                    t.deciders,
                    t.provides,
                    t.unpack,
                    t.weight,
                    shared.setdefault(scopes, scopes),
                    None if t.controls is None else scope_base + t.controls,
                    t.timed or controller.timed,
                    mapping,
                )
            )
        if not spec.task:
            exits_at = tuple(base + e for e in spec.exits)
            out.append(
                Node(
                    end,
                    f"<end {prefix}>",
                    BARRIER,
                    exits_at,
                    succs=shared.setdefault((k,), (k,)),
                    scopes=around,
                )
            )
        return out

    def copy_scopes(
        self, instance: _Instance, controller: Node, i: int, base: int, scope_base: int
    ) -> list[RetryScope]:
        spec = instance.spec
        prefix = f"{spec.name}[{i}]"
        around = controller.scopes[-1] if controller.scopes else None
        return [
            dataclasses.replace(
                s,
                index=scope_base + s.index,
                name=prefix + spec.suffixes[s.controller],
                controller=base + s.controller,
                nodes=[base + n for n in s.nodes],
                parent=around if s.parent is None else scope_base + s.parent,
            )
            for s in spec.scopes
        ]

    def moved(self, p: int, key: Any, instance: _Instance, i: int, base: int) -> tuple[int, Any]:
        """A template's provider ``p`` (of symbol ``key``) for copy ``i`` at ``base``."""
        if p >= 0:
            return base + p, key
        if p == ITEM:
            return instance.controller, i
        if p == OUTER:
            return self.run.nodes[instance.controller].mapping.outer[key]  # type: ignore[union-attr]
        assert p == INPUT
        return INPUT, key

    # Gating --------------------------------------------------------------------------------

    def admit(self, i: int) -> bool:
        """May node ``i``, a first atom of a copy of a Map with ``max_parallel``, start?
        If not it waits for a copy to finish."""
        gate, copy = self.gated[i]
        if copy in gate.admitted:
            return True
        if gate.active < gate.limit:
            gate.active += 1
            gate.admitted.add(copy)
            return True
        gate.waiting.setdefault(copy, []).append(i)
        return False

    def copy_done(self, j: int) -> None:
        """Node ``j`` ended a copy: start the next copies waiting at its gate."""
        gate, copy = self.gate_ends[j]
        if copy not in gate.admitted:
            return
        gate.admitted.discard(copy)
        gate.active -= 1
        run = self.run
        while gate.waiting and gate.active < gate.limit:
            copy = next(iter(gate.waiting))
            roots = gate.waiting.pop(copy)
            for r in roots:
                if run.ready(r):
                    run.release(r)
        run.spawn()

    def restore_gates(self) -> None:
        """Count, after a restore, the copies under way: their first atoms started and
        their end has not come."""
        run = self.run
        for instance in self.instances.values():
            gate = instance.gate
            if gate is None:
                continue
            gate.clear()
            for i, base in enumerate(instance.bases):
                started = any(run.states[base + r] is not _S.PENDING for r in instance.spec.roots)
                if started and run.states[self.end(instance, i)] not in _FINISHED:
                    gate.admitted.add(i)
                    gate.active += 1

    # Collecting ---------------------------------------------------------------------------

    def collect(self, k: int) -> bool:
        """Collector ``k`` is ready: publish the copies' results as a list (IGNORED when
        its controller was)."""
        run = self.run
        if run.states[k - 1] is _S.IGNORED:
            return run.ignore(k)
        run.states[k] = _S.SUCCESS
        run.values[k] = self.results(k)
        return True

    def results(self, k: int) -> list[Any]:
        """What collector ``k`` publishes: each copy's result, in the elements' order."""
        run = self.run
        c = k - 1
        instance = self.instances.get(c)
        count = run.results[c]
        if instance is None or not isinstance(count, int):
            return []
        spec = instance.spec
        out: list[Any] = []
        for base in instance.bases[:count]:
            if spec.task:
                out.append(run.values[base] if run.states[base] is _S.SUCCESS else None)
                continue
            values = {s: self.value(base + p, s) for s, p in spec.symbols.items() if p >= 0}
            if len(spec.symbols) == 1:
                out.append(next(iter(values.values()), None))
            else:
                out.append(values or None)
        return out

    def value(self, p: int, symbol: str) -> Any:
        run = self.run
        if run.states[p] is not _S.SUCCESS:
            return None
        value = run.values[p]
        return value[symbol] if run.nodes[p].unpack else value

    # Restoring ---------------------------------------------------------------------------

    def restore(self, records: Mapping[str, AtomRecord]) -> None:
        """Grow every copy the journal shows: each controller that expanded journaled how
        many (copies of copies included, as the graph grows)."""
        run = self.run
        i = 0
        while i < len(run.nodes):
            node = run.nodes[i]
            if node.mapping is not None and node.kind != BARRIER:
                record = records.get(node.name)
                if (
                    record is not None
                    and record.state in EXPANDED
                    and isinstance(record.result, int)
                ):
                    self.grow_to(i, record.result)
            i += 1

    def restore_value(self, c: int) -> None:
        """The sequence of controller ``c``, expanded before: read again from what its
        provider journaled (never from the provider's code)."""
        run = self.run
        try:
            run.values[c] = self.sequence(run.nodes[c])
        except (TypeError, KeyError, IndexError):
            run.values[c] = None

    def sequence(self, node: Node) -> Sequence[Any]:
        """What controller ``node`` maps over, as its provider published it; a TypeError
        that says so for anything but a sequence."""
        over = node.args[0][2] if node.args else "?"
        return _sequence(node.name, over, self.run.arguments(node).get(over))


def _sequence(name: str, over: str, value: object) -> Sequence[Any]:
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Sequence):
        kind = type(value).__name__
        raise TypeError(
            f"map {name!r}: symbol {over!r} must hold a sequence (a list or a tuple) to map"
            f" over, not {kind}"
            + (" (a set has no order: sort it)" if isinstance(value, set | frozenset) else "")
        )
    return value
