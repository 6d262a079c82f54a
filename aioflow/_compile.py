"""Compile a flow tree into an execution graph, once, before anything runs.

Every :class:`~aioflow.InvalidFlowError` is raised here: duplicate names, cycles,
ambiguous providers, dependencies inside an ``Unordered``, links to non-members, and
missing inputs (all of them at once, in a :class:`~aioflow.MissingInputsError`).

Symbols resolve through nested scopes that mirror the tree: a member sees the inputs and
what its ancestors in the graph provided, the nearest provider winning. Because a member
can only see its ancestors' symbols, data edges are always implied by the structure and
never need adding. Node indices are a topological order.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

from ._errors import InvalidFlowError, MissingInputsError
from ._flow import Checkpoint, Decider, Flow, Graph, Linear, Member, Unordered
from ._map import Map
from ._replay import UNPACK_ONE
from ._retry import Retry
from ._task import Task

INPUT: Final = -1
TASK: Final = "task"
CHECKPOINT: Final = "checkpoint"
BARRIER: Final = "barrier"
RETRY: Final = "retry"
MAP: Final = "map"
ITEM: Final = -2
"""A provider meaning "the element of the sequence this copy of a Map runs for"."""
OUTER: Final = -3
"""A provider meaning "what is visible around the Map" (for the nodes of its member)."""


@dataclass(slots=True, eq=False)
class Node:
    """One vertex of the execution graph: a task, a checkpoint, or an internal barrier
    that joins many predecessors to many successors without n*m edges.

    Its sequences are tuples, and equal ones are shared between nodes (most nodes have no
    successors, no deciders and the same predecessors as their siblings): a node costs
    little more than its own record in flows of 100k atoms."""

    index: int
    name: str
    kind: str
    preds: tuple[int, ...]
    task: Task | None = None
    checkpoint: Checkpoint | None = None
    args: tuple[tuple[str, int, str], ...] = ()
    succs: tuple[int, ...] = ()
    deciders: tuple[Decider, ...] = ()
    provides: tuple[str, ...] = ()
    unpack: bool = False
    weight: float = 1.0
    scopes: tuple[int, ...] = ()
    controls: int | None = None
    timed: bool = False
    """True inside a part with a ``timeout``: its attempts can be cancelled."""
    mapping: MapSpec | None = None
    """A Map's controller (kind MAP) and its collector (a BARRIER) carry what it maps."""


@dataclass(slots=True, eq=False)
class MapSpec:
    """What a :class:`~aioflow.Map` grows at run time: its member compiled once, as a
    template in coordinates of its own (node ``t`` of copy ``i`` is appended at
    ``base_i + t``), and where the member's outside symbols come from (``outer``:
    symbol -> (provider, key), in the coordinates of the graph holding the Map)."""

    name: str
    item: str
    provides: str | None
    max_parallel: int | None
    nodes: list[Node]
    scopes: list[RetryScope]
    roots: tuple[int, ...]
    exits: tuple[int, ...]
    symbols: dict[str, int]
    suffixes: tuple[str, ...]
    """What follows ``name[i]`` in each template node's name (``""`` for the copy itself)."""
    task: bool
    """The member is a task: copy ``i`` is one node, its own end."""
    outer: dict[str, tuple[int, Any]]


@dataclass(slots=True, eq=False)
class RetryScope:
    """A part of the flow that a retry runs again or a deadline bounds: a flow with
    ``retry=`` or ``timeout=``, or what follows a ``Checkpoint(retry=...)`` in its
    ``Linear``. ``controller`` is the node that starts each attempt (the flow's retry
    atom, or the checkpoint); ``nodes`` are run again. ``retry`` is None for a part with
    only a deadline: its failures go to the scope around it."""

    index: int
    name: str
    retry: Retry | None
    controller: int
    nodes: list[int]
    parent: int | None
    timeout: float | None = None


@dataclass(slots=True, eq=False)
class ExecGraph:
    """A compiled flow: nodes in topological order and what the flow publishes."""

    name: str
    nodes: list[Node]
    index: dict[str, int]
    symbols: dict[str, int]
    structure_json: str
    fingerprint: str
    checkpoints: dict[str, int]
    scopes: list[RetryScope]
    issues_tokens: bool = False
    """True when a task of the flow may ask for a completion token (it is given its
    ``external`` handle or its ``context``): only then does a run need the signer."""
    weighted: bool = True
    """False when every task (a Map's member's too) weighs 1: no weights to record."""

    @property
    def atoms(self) -> Iterable[Node]:
        """The nodes users see (tasks and checkpoints), barriers left out."""
        return (n for n in self.nodes if n.kind != BARRIER)

    @property
    def structure(self) -> list[Any]:
        """The flow's structure (what the fingerprint is made of), as the journal keeps it.

        Decoded from :attr:`structure_json` on each call: it is only needed to explain a
        mismatch, and a compiled graph need not carry a second copy of it."""
        structure: list[Any] = json.loads(self.structure_json)
        return structure


class _Scope:
    __slots__ = ("local", "parent")

    def __init__(self, parent: _Scope | None = None, local: dict[str, int] | None = None) -> None:
        self.parent = parent
        self.local: dict[str, int] = local if local is not None else {}

    def lookup(self, symbol: str) -> int | None:
        scope: _Scope | None = self
        while scope is not None:
            found = scope.local.get(symbol)
            if found is not None:
                return found
            if type(scope) is _MapScope:
                return scope.around(symbol)
            scope = scope.parent
        return None


class _MapScope(_Scope):
    """The root scope of a Map's member: what the member provides, then its item, then
    what is visible around the Map (noted in ``outer``, read as OUTER)."""

    __slots__ = ("item", "outer", "outside")

    def __init__(self, outside: _Scope, item: str) -> None:
        super().__init__()
        self.outside = outside
        self.item = item
        self.outer: dict[str, tuple[int, Any]] = {}

    def around(self, symbol: str) -> int | None:
        if symbol == self.item:
            return ITEM
        provider = self.outside.lookup(symbol)
        if provider is None:
            return None
        self.outer[symbol] = (provider, symbol)
        return OUTER


def _template(m: Map, outside: _Scope, parent: _Builder) -> tuple[MapSpec, Any]:
    """Compile a Map's member once, in coordinates of its own (see MapSpec), for the
    graph ``parent`` builds."""
    member = m.member
    if isinstance(member, Flow):
        _check_names(member)
    builder = _Builder()
    if m.item in _gives(member, builder.summaries):
        raise InvalidFlowError(
            f"map {m.name!r}: its member provides {m.item!r}, the symbol each copy sees its"
            " element as; give the map another item=",
            atoms=[m.name],
        )
    root = _MapScope(outside, m.item)
    exits, structure = builder.build(member, [], root)
    parent.tokens = parent.tokens or builder.tokens
    parent.weighted = parent.weighted or builder.weighted
    for atom, symbols in builder.missing.items():
        parent.missing.setdefault(
            f"{m.name}[*]" + ("" if atom == member.name else f".{atom}"), []
        ).extend(symbols)
    nodes = builder.nodes
    _link_successors(nodes, builder.edge_from, builder.edge_to)
    task = isinstance(member, Task)
    suffixes = tuple(
        "" if task or (t.index == 0 and t.kind == RETRY) else f".{t.name}" for t in nodes
    )
    spec = MapSpec(
        name=m.name,
        item=m.item,
        provides=m.provides,
        max_parallel=m.max_parallel,
        nodes=nodes,
        scopes=builder.scopes,
        roots=tuple(t.index for t in nodes if not t.preds),
        exits=tuple(exits),
        symbols=root.local,
        suffixes=suffixes,
        task=task,
        outer=root.outer,
    )
    return spec, structure


def _summary(
    member: Member, cache: dict[int, tuple[set[str], set[str]]]
) -> tuple[set[str], set[str]]:
    """(symbols the member needs from outside, symbols it provides)."""
    if isinstance(member, Task):  # cheap enough to work out again, and too many to keep
        requires = member.requires
        return {r.symbol for r in requires} if requires else set(), set(member.provided)
    key = id(member)
    if key in cache:
        return cache[key]
    needs: set[str] = set()
    gives: set[str] = set()
    if isinstance(member, Map):
        inner, _ = _summary(member.member, cache)
        needs = (inner - {member.item}) | {member.over}
        gives = {member.provides} if member.provides else set()
        cache[key] = (needs, gives)
        return needs, gives
    if isinstance(member, Linear):
        for m in member.members:
            n, g = _summary(m, cache)
            needs |= n - gives
            gives |= g
    elif isinstance(member, Flow):
        for m in member.members:
            n, g = _summary(m, cache)
            needs |= n
            gives |= g
        needs -= gives
    if isinstance(member, Flow) and member.retry is not None and member.retry.provides:
        needs.discard(member.retry.provides)
    cache[key] = (needs, gives)
    return needs, gives


def _gives(member: Member, cache: dict[int, tuple[set[str], set[str]]]) -> Iterable[str]:
    """The symbols ``member`` provides (a task's own tuple: no set made for it)."""
    return member.provided if isinstance(member, Task) else _summary(member, cache)[1]


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.index: dict[str, int] = {}
        self.checkpoints: dict[str, int] = {}
        self.missing: dict[str, list[str]] = {}
        self.summaries: dict[int, tuple[set[str], set[str]]] = {}
        self.scopes: list[RetryScope] = []
        self.scope_stack: list[int] = []
        self.scope_tuple: tuple[int, ...] = ()  # the stack as nodes keep it, shared
        # Edges as two flat lists (sources, targets): one list per node with successors
        # would be 100k more objects for the garbage collector in a chain of 100k.
        self.edge_from: list[int] = []
        self.edge_to: list[int] = []
        self.shared: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.tokens = False
        """A task added may hand out a completion token (see ExecGraph.issues_tokens)."""
        self.weighted = False
        """A task added has a weight other than 1 (see weights_of)."""
        self.maps: list[str] = []
        """The names of the Maps added (the copies' names they reserve are checked)."""

    def node(
        self,
        name: str,
        kind: str,
        preds: list[int] | tuple[int, ...],
        *,
        task: Task | None = None,
        checkpoint: Checkpoint | None = None,
        args: tuple[tuple[str, int, str], ...] = (),
        provides: tuple[str, ...] = (),
        unpack: bool = False,
        weight: float = 1.0,
    ) -> int:
        """Add a node; ``preds`` as a tuple is one :meth:`shared_tuple` gave."""
        i = len(self.nodes)
        shared = preds if isinstance(preds, tuple) else self.shared_tuple(preds)
        self.nodes.append(
            Node(
                i,
                name,
                kind,
                shared,
                task,
                checkpoint,
                args,
                (),
                (),
                provides,
                unpack,
                weight,
                self.scope_tuple,
            )
        )
        if preds:
            self.edge_from.extend(preds)
            self.edge_to.extend([i] * len(preds))
        if kind != BARRIER:
            self.index[name] = i
        return i

    def shared_tuple(self, preds: list[int]) -> tuple[int, ...]:
        """``preds`` as a tuple, the same object for equal ones."""
        preds_t = tuple(preds)
        return self.shared.setdefault(preds_t, preds_t)

    def barrier(self, preds: list[int]) -> list[int]:
        return [self.node(f"<join {len(self.nodes)}>", BARRIER, preds)]

    def build(self, member: Member, preds: list[int], scope: _Scope) -> tuple[list[int], Any]:
        """Add ``member`` after ``preds``; its writes go into ``scope``. Returns its exits
        and its structure (what the fingerprint is made of)."""
        if isinstance(member, Task):
            return self.task(member, preds, scope)
        if isinstance(member, Checkpoint):
            i = self.node(member.name, CHECKPOINT, preds, checkpoint=member, weight=0.0)
            self.checkpoints[member.name] = i
            return [i], ["checkpoint", member.name]
        if isinstance(member, Map):
            return self.map(member, preds, scope)
        if isinstance(member, Flow) and (member.retry is not None or member.timeout is not None):
            return self.retried(member, preds, scope)
        return self.body(member, preds, scope)

    def body(self, member: Flow, preds: list[int], scope: _Scope) -> tuple[list[int], list[Any]]:
        if isinstance(member, Linear):
            return self.linear(member, preds, scope)
        if isinstance(member, Unordered):
            return self.unordered(member, preds, scope)
        if isinstance(member, Graph):
            return self.graph(member, preds, scope)
        raise InvalidFlowError(f"unknown kind of flow {type(member).__name__}", atoms=[member.name])

    def open_scope(
        self, name: str, retry: Retry | None, controller: int, timeout: float | None = None
    ) -> int:
        if retry is not None and retry.values is not None and not retry.values:
            raise InvalidFlowError(
                f"{name!r}: Retry.for_each needs at least one value; it was given none",
                atoms=[name],
            )
        index = len(self.scopes)
        parent = self.scope_stack[-1] if self.scope_stack else None
        self.scopes.append(RetryScope(index, name, retry, controller, [], parent, timeout))
        self.nodes[controller].controls = index
        self.scope_stack.append(index)
        self.scope_tuple = tuple(self.scope_stack)
        return len(self.nodes)

    def close_scope(self, start: int) -> None:
        index = self.scope_stack.pop()
        self.scope_tuple = tuple(self.scope_stack)
        scope = self.scopes[index]
        scope.nodes = list(range(start, len(self.nodes)))
        if scope.timeout is not None:
            for i in scope.nodes:
                self.nodes[i].timed = True

    def retried(self, flow: Flow, preds: list[int], scope: _Scope) -> tuple[list[int], list[Any]]:
        """A flow with a retry or a deadline: a retry atom (named as the flow) starts every
        attempt (and sets its deadline) and, with ``Retry.for_each``, publishes that
        attempt's value inside the flow."""
        retry = flow.retry
        provides = (retry.provides,) if retry is not None and retry.provides else ()
        controller = self.node(flow.name, RETRY, preds, provides=provides, weight=0.0)
        start = self.open_scope(flow.name, retry, controller, flow.timeout)
        symbol = provides[0] if provides else None
        inner = _Scope(scope, {symbol: controller}) if symbol is not None else scope
        exits, structure = self.body(flow, [controller], inner)
        self.close_scope(start)
        if symbol is not None:
            inner.local.pop(symbol, None)
            scope.local.update(inner.local)
        # A deadline alone: its value is not structure (it may change between runs).
        kind = "deadline" if retry is None else "for_each" if retry.values else "times"
        return exits, [*structure, ["retry", kind, list(provides)]]

    def map(self, m: Map, preds: list[int], scope: _Scope) -> tuple[list[int], list[Any]]:
        """A Map: its controller (reads the sequence, grows the copies), its member
        compiled as a template, and its collector (the join that publishes the list)."""
        over = scope.lookup(m.over)
        if over is None:
            self.missing.setdefault(m.name, []).append(m.over)
        args = ((m.over, over, m.over),) if over is not None else ()
        c = self.node(m.name, MAP, preds, args=args, unpack=True, weight=0.0)
        self.maps.append(m.name)
        spec, structure = _template(m, scope, self)
        self.nodes[c].mapping = spec
        provides = (m.provides,) if m.provides else ()
        k = self.node(f"<collect {m.name}>", BARRIER, [c], provides=provides)
        self.nodes[k].mapping = spec
        if m.provides:
            scope.local[m.provides] = k
        return [k], ["map", m.name, m.over, m.item, m.provides, structure]

    def task(
        self,
        task: Task,
        preds: list[int] | tuple[int, ...],
        scope: _Scope,
        writes: dict[str, int] | None = None,
    ) -> tuple[list[int], Any]:
        """Add ``task``, looking its requirements up in ``scope``; what it provides goes into
        ``writes`` (by default, the scope itself)."""
        retry = task.retry
        if retry is not None and retry.values is not None:
            raise InvalidFlowError(
                f"task {task.name!r}: Retry.for_each belongs on a flow, not on a task",
                atoms=[task.name],
            )
        requires = task.requires
        args: tuple[tuple[str, int, str], ...] = ()
        # Tuples of plain values, which the garbage collector stops tracking: a flow of
        # 100k tasks must not make it traverse a million short-lived lists.
        needs: tuple[tuple[str, str, bool], ...] = ()
        if requires:
            found = []
            for req in requires:
                provider = scope.lookup(req.symbol)
                if provider is None:
                    if not req.optional:
                        self.missing.setdefault(task.name, []).append(req.symbol)
                    continue
                found.append((req.param, provider, req.symbol))
            args = tuple(found)
            needs = tuple([(r.param, r.symbol, r.optional) for r in requires])
        provides = task.provides
        provided: tuple[str, ...] = ()
        unpack = False
        if isinstance(provides, tuple):
            provided, unpack = provides, True
        elif provides is not None:
            provided = (provides,)
        if task._injects and task.takes_token:
            self.tokens = True
        weight = float(task.weight)
        if weight != 1.0:
            self.weighted = True
        i = self.node(
            task.name,
            TASK,
            preds,
            task=task,
            args=args,
            provides=provided,
            unpack=unpack,
            weight=weight,
        )
        if provided:
            writes = scope.local if writes is None else writes
            for symbol in provided:
                writes[symbol] = i
        if unpack and len(provided) == 1:
            # provides=("x",) unpacks a one-item result, provides="x" keeps it whole: the
            # structure (and so the fingerprint) tells them apart. Only here, so that the
            # fingerprints of every other flow stay what journals already hold.
            return [i], ("task", task.name, needs, provided, UNPACK_ONE)
        return [i], ("task", task.name, needs, provided)

    def linear(self, flow: Linear, preds: list[int], scope: _Scope) -> tuple[list[int], list[Any]]:
        current = preds
        structure = []
        start = None
        for m in flow.members:
            if len(current) > 1 and isinstance(m, Flow):
                current = self.barrier(current)
            current, s = self.build(m, current, scope)
            structure.append(s)
            if isinstance(m, Checkpoint) and m.retry is not None:
                if start is not None:
                    self.close_scope(start)
                start = self.open_scope(m.name, m.retry, current[0])
        if start is not None:
            self.close_scope(start)
        return current, ["linear", flow.name, structure]

    def no_checkpoint_retry(self, flow: Flow) -> None:
        for m in flow.members:
            if isinstance(m, Checkpoint) and m.retry is not None:
                raise InvalidFlowError(
                    f"checkpoint {m.name!r} has a retry but is a member of {flow.kind} flow"
                    f" {flow.name!r}; a checkpoint with a retry must be a member of a Linear,"
                    " whose following members it runs again",
                    atoms=[m.name, flow.name],
                )

    def unordered(
        self, flow: Unordered, preds: list[int], scope: _Scope
    ) -> tuple[list[int], list[Any]]:
        members = flow.members
        providers: dict[str, str] = {}
        tasks: list[Task] = []  # when all members are tasks (the common case): a loop of its own
        for m in members:
            gives: Iterable[str]
            if isinstance(m, Task):
                tasks.append(m)
                if m.provides is None:  # most tasks
                    continue
                gives = m.provided
            else:
                gives = _gives(m, self.summaries)
            for symbol in gives:
                if symbol in providers:
                    raise InvalidFlowError(
                        f"unordered flow {flow.name!r}: {providers[symbol]!r} and {m.name!r} both"
                        f" provide {symbol!r}; concurrent providers of one symbol are ambiguous",
                        atoms=[providers[symbol], m.name],
                    )
                providers[symbol] = m.name
        if len(tasks) != len(members):
            self.no_checkpoint_retry(flow)
        for m in members if providers else ():
            for symbol in sorted(_summary(m, self.summaries)[0]):
                other = providers.get(symbol)
                if other is not None and other != m.name:
                    raise InvalidFlowError(
                        f"unordered flow {flow.name!r}: {m.name!r} needs {symbol!r}, which its"
                        f" sibling {other!r} provides; members of an Unordered run concurrently"
                        " and may not depend on each other (use a Linear or a Graph)",
                        atoms=[m.name, other],
                    )
        exits: list[int] = []
        structure = []
        writes: dict[str, int] = {}
        if len(tasks) == len(members):  # no sibling provides what one needs: no scopes
            first = len(self.nodes)
            shared = self.shared_tuple(preds)
            structure = [self.task(m, shared, scope, writes)[1] for m in tasks]
            exits = list(range(first, len(self.nodes)))
        else:
            for m in members:
                if isinstance(m, Task):
                    ex, s = self.task(m, preds, scope, writes)
                else:
                    child = _Scope(scope)
                    ex, s = self.build(m, preds, child)
                    writes.update(child.local)
                exits.extend(ex)
                structure.append(s)
        scope.local.update(writes)
        return exits, ["unordered", flow.name, structure]

    def graph(self, flow: Graph, preds: list[int], scope: _Scope) -> tuple[list[int], list[Any]]:
        self.no_checkpoint_retry(flow)
        members = {m.name: m for m in flow.members}
        providers: dict[str, str] = {}
        for m in flow.members:
            for symbol in _gives(m, self.summaries):
                if symbol in providers:
                    raise InvalidFlowError(
                        f"graph {flow.name!r}: {providers[symbol]!r} and {m.name!r} both provide"
                        f" {symbol!r}; which one a consumer gets would be ambiguous",
                        atoms=[providers[symbol], m.name],
                    )
                providers[symbol] = m.name
        deps: dict[str, list[str]] = {name: [] for name in members}
        deciders: dict[str, list[Decider]] = {}
        for m in flow.members:
            for symbol in sorted(_summary(m, self.summaries)[0]):
                source = providers.get(symbol)
                if source is not None and source != m.name and source not in deps[m.name]:
                    deps[m.name].append(source)
        for link in flow.links:
            for end in (link.source, link.target):
                if end not in members:
                    raise InvalidFlowError(
                        f"graph {flow.name!r}: link {link.source!r} -> {link.target!r} names"
                        f" {end!r}, which is not a member of the graph",
                        atoms=[end],
                    )
            if link.source == link.target:
                raise InvalidFlowError(
                    f"graph {flow.name!r}: {link.source!r} is linked to itself (a cycle)",
                    atoms=[link.source],
                )
            if link.source not in deps[link.target]:
                deps[link.target].append(link.source)
            if link.decider is not None:
                deciders.setdefault(link.target, []).append(link.decider)
        order = _toposort(flow.name, [m.name for m in flow.members], deps)
        exits_of: dict[str, list[int]] = {}
        writes_of: dict[str, dict[str, int]] = {}
        structure: dict[str, Any] = {}
        used: set[str] = set()
        for name in order:
            before = [x for d in deps[name] for x in exits_of[d]] if deps[name] else preds
            if len(before) > 1 and isinstance(members[name], Flow):
                before = self.barrier(before)  # n + m edges instead of n * m
            used.update(deps[name])
            seen = {s: i for d in deps[name] for s, i in writes_of[d].items()}
            child = _Scope(_Scope(scope, seen) if seen else scope)
            start = len(self.nodes)
            exits_of[name], structure[name] = self.build(members[name], before, child)
            writes_of[name] = child.local
            for fn in deciders.get(name, ()):
                for node in self.nodes[start:]:
                    if not node.preds or min(node.preds) < start:
                        node.deciders = (*node.deciders, fn)
        for w in writes_of.values():
            scope.local.update(w)
        exits = [x for m in flow.members if m.name not in used for x in exits_of[m.name]]
        links = sorted([lk.source, lk.target, lk.decider is not None] for lk in flow.links)
        return exits, ["graph", flow.name, [structure[m.name] for m in flow.members], links]


def _toposort(graph: str, names: list[str], deps: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm, taking ready members in their declared order so that compiling
    the same graph always numbers its nodes the same way."""
    position = {n: i for i, n in enumerate(names)}
    indegree = {n: len(deps[n]) for n in names}
    users: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for d in deps[n]:
            users[d].append(n)
    ready = [position[n] for n in names if indegree[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        n = names[heapq.heappop(ready)]
        order.append(n)
        for u in users[n]:
            indegree[u] -= 1
            if indegree[u] == 0:
                heapq.heappush(ready, position[u])
    if len(order) < len(names):
        left = {n for n in names if indegree[n] > 0}
        raise InvalidFlowError(
            f"graph {graph!r} has a cycle: {' -> '.join(_find_cycle(left, deps))}",
            atoms=sorted(left),
        )
    return order


def _find_cycle(left: set[str], deps: dict[str, list[str]]) -> list[str]:
    start = min(left)
    path = [start]
    seen = {start: 0}
    current = start
    while True:
        current = next(d for d in sorted(deps[current]) if d in left)
        if current in seen:
            cycle = [*path[seen[current] :], current]
            return list(reversed(cycle))
        seen[current] = len(path)
        path.append(current)


def _check_names(flow: Flow) -> None:
    """Refuse names that would be ambiguous: two atoms of one name anywhere in the tree
    (tasks, checkpoints, Maps, and flows with a retry or a deadline, whose controller is
    an atom named like them), or two members of one name in one flow (a Graph's links
    name members). A flow without a controller is no atom: it may share its name with a
    member, as ``Linear("publish", prepare, publish)`` does. A Map's member is checked as
    a flow of its own."""
    if isinstance(flow, Map):
        return  # one atom; its member is checked when the Map is compiled
    atoms: list[str] = []
    controlled: set[str] = set()
    dups: set[str] = set()
    if flow.retry is not None or flow.timeout is not None:
        atoms.append(flow.name)
        controlled.add(flow.name)
    stack: list[Flow] = [flow]
    while stack:
        members = stack.pop().members
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            dups.update(_repeated(names))
        if not any([isinstance(m, Flow) and not isinstance(m, Map) for m in members]):
            atoms += names  # tasks, checkpoints and Maps only: the common case
            continue
        for m in members:
            if not isinstance(m, Flow) or isinstance(m, Map):
                atoms.append(m.name)
                continue
            stack.append(m)
            if m.retry is not None or m.timeout is not None:
                atoms.append(m.name)
                controlled.add(m.name)
    if len(set(atoms)) != len(atoms):
        dups.update(_repeated(atoms))
    if dups:
        ordered = sorted(dups)
        why = ""
        if dups & controlled:
            why = (
                "; a flow with retry= or timeout= is itself an atom named like the flow, so"
                " it cannot share its name with a member"
            )
        raise InvalidFlowError(
            f"flow {flow.name!r} uses the name(s) {', '.join(map(repr, ordered))} more than"
            " once; atoms (and the members of one flow) need names of their own (use"
            f" task.using(name=...) for copies){why}",
            atoms=ordered,
        )


def _repeated(names: list[str]) -> set[str]:
    """The names that occur more than once in ``names``."""
    seen: set[str] = set()
    again: set[str] = set()
    for name in names:
        if name in seen:
            again.add(name)
        seen.add(name)
    return again


def _link_successors(nodes: list[Node], sources: list[int], targets: list[int]) -> None:
    """Give each node the tuple of its successors, in the order the edges were added
    (a counting sort of the edges by source); equal tuples are shared."""
    if not sources:  # an Unordered of tasks, a Map's one task: nothing to do, in no loop
        return
    start = [0] * (len(nodes) + 1)
    for p in sources:
        start[p + 1] += 1
    for i in range(len(nodes)):
        start[i + 1] += start[i]
    ordered = [0] * len(sources)
    place = start[:-1]
    for p, t in zip(sources, targets, strict=True):
        ordered[place[p]] = t
        place[p] += 1
    shared: dict[tuple[int, ...], tuple[int, ...]] = {}
    for i, node in enumerate(nodes):
        if start[i] != start[i + 1]:
            succs = tuple(ordered[start[i] : start[i + 1]])
            node.succs = shared.setdefault(succs, succs)


def compile_flow(flow: Flow, inputs: Collection[str] = ()) -> ExecGraph:
    """Check ``flow`` against the given input symbols and build its execution graph."""
    if not isinstance(flow, Flow):
        raise TypeError(f"expected a flow (Linear, Unordered or Graph), not {flow!r}")
    _check_names(flow)
    builder = _Builder()
    root = _Scope(None, dict.fromkeys(inputs, INPUT))
    _, structure = builder.build(flow, [], root)
    if builder.missing:
        raise MissingInputsError(builder.missing)
    # A tree of fresh lists: no cycle to look for (a quarter of the encoding's cost).
    text = json.dumps(structure, separators=(",", ":"), check_circular=False)
    import hashlib  # here, not at the top: hashlib (and OpenSSL) costs ms at import

    nodes = builder.nodes
    _link_successors(nodes, builder.edge_from, builder.edge_to)
    for name in builder.maps:
        taken = sorted(a for a in builder.index if a.startswith(f"{name}["))
        if taken:
            raise InvalidFlowError(
                f"map {name!r} names its copies {name}[0], {name}[1]...; the flow has an atom"
                f" named {taken[0]!r} already",
                atoms=[name, taken[0]],
            )
    return ExecGraph(
        name=flow.name,
        nodes=nodes,
        index=builder.index,
        symbols=root.local,
        structure_json=text,
        fingerprint=hashlib.sha256(text.encode()).hexdigest()[:32],
        checkpoints=builder.checkpoints,
        scopes=builder.scopes,
        issues_tokens=builder.tokens,
        weighted=builder.weighted,
    )


def weights_of(graph: ExecGraph) -> dict[str, float]:
    """The tasks' weights that are not 1, as a flow's first event records them; a Map's
    copies under ``name[*]`` (``name[*].atom``), since their number is not known yet."""
    if not graph.weighted:
        return {}
    out: dict[str, float] = {}
    stack: list[tuple[list[Node], str, tuple[str, ...] | None]] = [(graph.nodes, "", None)]
    while stack:
        nodes, prefix, suffixes = stack.pop()
        for node in nodes:
            name = node.name if suffixes is None else prefix + suffixes[node.index]
            if node.task is not None and node.weight != 1.0:
                out[name] = node.weight
            if node.kind == MAP and node.mapping is not None:
                stack.append((node.mapping.nodes, f"{name}[*]", node.mapping.suffixes))
    return out


def _flatten(structure: list[Any], parent: str, out: dict[str, str]) -> None:
    kind, name = structure[0], structure[1]
    path = f"{parent}/{name}" if parent else name
    if kind == "map":
        member = json.dumps(structure[5], separators=(",", ":"))
        out[name] = (
            f"map at {path} over {structure[2]!r} as {structure[3]!r} providing"
            f" {structure[4]!r} of {member}"
        )
    elif kind == "task":
        unpacked = " (unpacked)" if structure[4:] == [UNPACK_ONE] else ""
        out[name] = f"task at {path} requiring {structure[2]} providing {structure[3]}{unpacked}"
    elif kind == "checkpoint":
        out[name] = f"checkpoint at {path}"
    else:
        members = structure[2]
        order = [m[1] for m in members]
        out[name] = f"{kind} flow at {path} with members {order}" + (
            f" and links {structure[3]}" if kind == "graph" else ""
        )
        for m in members:
            _flatten(m, path, out)


def describe_differences(old: list[Any], new: list[Any]) -> list[str]:
    """What differs between two flow structures, one readable line per difference."""
    before: dict[str, str] = {}
    after: dict[str, str] = {}
    _flatten(old, "", before)
    _flatten(new, "", after)
    lines = [f"{n!r} is in the journal but not in the flow" for n in before if n not in after]
    lines += [f"{n!r} is in the flow but not in the journal" for n in after if n not in before]
    lines += [
        f"{n!r} was {before[n]}, is now {after[n]}"
        for n in before
        if n in after and before[n] != after[n]
    ]
    return lines or ["the structures differ"]
