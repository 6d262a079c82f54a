"""The registry: tasks, flows and factories found by what they can do, not by import path.

A driver registers what it offers under *capabilities* (words such as ``"backup"`` or
``"live"``) and *attributes* (free metadata such as ``vendor="acme"``); a caller asks for
the capabilities it needs and composes the entry's :meth:`RegistryEntry.build` into its
own flow. Drivers shipped as separate packages register through Python entry points
(:meth:`Registry.load_entry_points`). An engine given the registry runs and resumes
flows by entry name.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

from ._errors import AmbiguousError, NotFoundError
from ._flow import Checkpoint, Decider, Flow, Graph, Link, Member
from ._log import get_logger
from ._task import Task

__all__ = ["LoadReport", "Prefer", "Registry", "RegistryEntry", "providers_table"]

_T = TypeVar("_T")
_LOG = get_logger("aioflow")

Kind: TypeAlias = Literal["task", "flow", "checkpoint", "factory"]
Prefer: TypeAlias = "str | Callable[[RegistryEntry], Any]"
"""An attribute name (highest value wins) or a key function (highest key wins)."""


# Validation -----------------------------------------------------------------------------


def _check_capabilities(capabilities: tuple[object, ...], where: str) -> frozenset[str]:
    for cap in capabilities:
        if isinstance(cap, list | tuple | set | frozenset):
            raise TypeError(
                f"{where}: capabilities are separate arguments, not a {type(cap).__name__}"
                f" (write {where[:-1]}..., {', '.join(map(repr, cap))}))"
            )
        if not isinstance(cap, str):
            raise TypeError(f"{where}: a capability must be a string, not {cap!r}")
        if not cap or any(ch.isspace() for ch in cap):
            raise ValueError(
                f"{where}: a capability is one non-empty word without spaces, not {cap!r}"
            )
    return frozenset(capabilities)  # type: ignore[arg-type]


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a registry entry name must be a non-empty string, not {name!r}")
    if ":" in name:
        raise ValueError(
            f"registry entry name {name!r} contains ':'; the engine reads 'module:attr' as an"
            " import reference, so such a name could never be run by name"
        )
    return name


def _check_prefer(prefer: object) -> Callable[[RegistryEntry], Any] | None:
    if prefer is None:
        return None
    if isinstance(prefer, str) and prefer:
        return lambda entry: entry.attributes.get(prefer)
    if callable(prefer) and not isinstance(prefer, str):
        return prefer
    raise TypeError(f"prefer= must be an attribute name or a key function, not {prefer!r}")


def _kind_of(obj: object) -> Kind:
    if isinstance(obj, Task):
        return "task"
    if isinstance(obj, Flow):
        return "flow"
    if isinstance(obj, Checkpoint):
        return "checkpoint"
    if inspect.iscoroutinefunction(obj):
        raise TypeError(
            f"{obj!r} is an async function; a factory is a plain callable that returns a task,"
            " a flow or a checkpoint. To register it as a task, decorate it with @aioflow.task"
        )
    if callable(obj):
        return "factory"
    raise TypeError(
        "the registry holds tasks, flows, checkpoints and factories (callables returning"
        f" one of those), not {obj!r}"
    )


def _default_name(obj: Any, kind: Kind) -> str:
    if kind != "factory":
        return obj.name  # type: ignore[no-any-return]
    name = getattr(obj, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>":
        raise ValueError(f"factory {obj!r} has no usable __name__; register it with name=...")
    return name


# Describing queries and entries in messages ---------------------------------------------


def _words(caps: frozenset[str] | list[str]) -> str:
    return ", ".join(map(repr, sorted(caps)))


def _attrs_text(attributes: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in attributes.items())


def _query_text(caps: frozenset[str], name: str | None, attributes: Mapping[str, Any]) -> str:
    """The query as words: "capabilities 'a', 'b' with vendor='x'", or "everything"."""
    conditions = ([f"name={name!r}"] if name is not None else []) + (
        [_attrs_text(attributes)] if attributes else []
    )
    text = f"capabilities {_words(caps)}" if caps else ""
    if conditions:
        text += (" with " if text else "") + ", ".join(conditions)
    return text or "everything"


def _entry_text(entry: RegistryEntry) -> str:
    inside = _words(entry.capabilities) or "no capabilities"
    if entry.attributes:
        inside += f"; {_attrs_text(entry.attributes)}"
    return f"{entry.name!r} ({inside})"


# Building -------------------------------------------------------------------------------


def _tree_names(member: Member) -> list[str]:
    names = [member.name]
    if isinstance(member, Flow):
        for m in member.members:
            names.extend(_tree_names(m))
    return names


class _RenamedDecider:
    """A decider of a renamed graph: it sees its upstream atoms under their original names,
    so a decider written against the registered flow works in every copy."""

    __slots__ = ("_decider", "_original")

    def __init__(self, decider: Decider, original: Mapping[str, str]) -> None:
        self._decider = decider
        self._original = original

    def __call__(self, results: Mapping[str, Any]) -> object:
        return self._decider({self._original.get(k, k): v for k, v in results.items()})

    def __repr__(self) -> str:
        return f"<renamed {self._decider!r}>"


def _copy_tree(member: Member, renames: Mapping[str, str], original: Mapping[str, str]) -> Member:
    """A new tree like ``member`` with names mapped through ``renames``: every task, flow
    and checkpoint is a new object, and graph links follow the new names."""
    name = renames.get(member.name, member.name)
    if isinstance(member, Task):
        return member.using(name=name)  # using() copies the task's own mappings too
    if isinstance(member, Checkpoint):
        return Checkpoint(name, retry=member.retry, keep=member.keep, keep_for=member.keep_for)
    flow = copy.copy(member)
    flow.name = name
    flow.members = [_copy_tree(m, renames, original) for m in member.members]
    if isinstance(member, Graph):
        assert isinstance(flow, Graph)
        flow.links = [
            Link(
                renames.get(link.source, link.source),
                renames.get(link.target, link.target),
                link.decider
                if link.decider is None or not renames
                else _RenamedDecider(link.decider, original),
            )
            for link in member.links
        ]
    return flow


@dataclass(frozen=True, slots=True, eq=False)
class _Record:
    name: str
    capabilities: frozenset[str]
    attributes: Mapping[str, Any]
    obj: object
    kind: Kind


@dataclass(slots=True)
class _Numbering:
    """How many builds of one registration one numbering scope saw, and the names used."""

    builds: int = 0
    used: set[str] = field(default_factory=set)


_SCOPE: ContextVar[dict[_Record, _Numbering] | None] = ContextVar(
    "aioflow_registry_scope", default=None
)
"""Set while a factory entry builds: the numbering its inner builds share, per registration."""


class RegistryEntry:
    """One registered task, flow or factory, with its capabilities and attributes.

    :meth:`build` turns it into a new flow member to compose into a larger flow. Every
    lookup (``get``, ``find``, iteration) hands out a new ``RegistryEntry`` object; two of
    them compare equal when they stand for the same registration.
    """

    __slots__ = ("_numbering", "_record")

    def __init__(self, record: _Record) -> None:
        self._record = record
        self._numbering = _Numbering()

    @property
    def name(self) -> str:
        """The entry's unique key in its registry (what ``engine.run("name")`` looks up)."""
        return self._record.name

    @property
    def capabilities(self) -> frozenset[str]:
        """The words this entry was registered under."""
        return self._record.capabilities

    @property
    def attributes(self) -> Mapping[str, Any]:
        """The entry's metadata (read-only)."""
        return self._record.attributes

    @property
    def obj(self) -> object:
        """What was registered: a task, a flow, a checkpoint or a factory."""
        return self._record.obj

    @property
    def kind(self) -> Kind:
        """``"task"``, ``"flow"``, ``"checkpoint"`` or ``"factory"``."""
        return self._record.kind

    def build(self, **kwargs: Any) -> Member:
        """A new flow member made from this entry, to compose into a larger flow.

        A factory is called with ``kwargs`` (other kinds take none); a task, flow or
        checkpoint is copied, so changing what ``build`` returns never changes the
        registry.

        Builds are numbered so that they can sit side by side in one flow: the first keeps
        the registered names, and the n-th renames every flow, task and checkpoint whose
        name an earlier build used by appending ``-n`` (``-n+1``, ... if that is taken).
        Inside a factory entry's build, all builds of one registration share a numbering,
        whichever entry object they go through; elsewhere each entry object numbers its
        own builds. Either way the names depend only on the order of the builds, so code
        that composes a flow the same way gets the same names in every process, as
        resuming needs. Graph deciders still see their upstream atoms under the original
        names.
        """
        record = self._record
        if record.kind == "factory":
            made = self._call_factory(kwargs)
        elif kwargs:
            raise TypeError(
                f"registry entry {record.name!r} holds a {record.kind}; only a factory's build"
                f" takes arguments, and it was given {', '.join(sorted(kwargs))}"
            )
        else:
            made = record.obj  # type: ignore[assignment]
        scope = _SCOPE.get()
        numbering = self._numbering if scope is None else scope.setdefault(record, _Numbering())
        numbering.builds += 1
        names = _tree_names(made)
        taken = numbering.used | set(names)
        renames: dict[str, str] = {}
        for name in names:
            if name in numbering.used and name not in renames:
                n = numbering.builds
                while f"{name}-{n}" in taken:
                    n += 1
                renames[name] = f"{name}-{n}"
                taken.add(renames[name])
        built = _copy_tree(made, renames, {new: old for old, new in renames.items()})
        numbering.used.update(_tree_names(built))
        return built

    def _call_factory(self, kwargs: dict[str, Any]) -> Member:
        name = self._record.name
        factory: Callable[..., Any] = self._record.obj  # type: ignore[assignment]
        try:
            signature: inspect.Signature | None = inspect.signature(factory)
        except (TypeError, ValueError):
            signature = None
        if signature is not None:
            try:
                signature.bind(**kwargs)
            except TypeError as exc:
                given = ", ".join(f"{k}=..." for k in kwargs) or "no arguments"
                raise TypeError(
                    f"registry entry {name!r}: its factory cannot be called with ({given}): {exc}"
                ) from None
        token = _SCOPE.set({})
        try:
            made = factory(**kwargs)
        finally:
            _SCOPE.reset(token)
        if not isinstance(made, Task | Flow | Checkpoint):
            raise TypeError(
                f"registry entry {name!r}: its factory returned {made!r}, not a task, a flow"
                " or a checkpoint (to register a function as a task, decorate it with"
                " @aioflow.task first)"
            )
        return made

    def _matches(self, caps: frozenset[str], name: str | None, attrs: Mapping[str, Any]) -> bool:
        record = self._record
        return (
            (name is None or record.name == name)
            and caps <= record.capabilities
            and all(k in record.attributes and record.attributes[k] == v for k, v in attrs.items())
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistryEntry):
            return NotImplemented
        return self._record is other._record

    def __hash__(self) -> int:
        return id(self._record)

    def __repr__(self) -> str:
        return f"<RegistryEntry {self.kind} {_entry_text(self)}>"


class LoadReport(NamedTuple):
    """What :meth:`Registry.load_entry_points` did: the providers ``loaded`` (entry point
    names) and those that ``failed``, each with its error."""

    loaded: list[str]
    failed: list[tuple[str, Exception]]


class Registry:
    """Tasks, flows and factories, each under a unique name, found by capabilities and
    attributes.

    Lookups return entries in registration order. Give the registry to an
    :class:`~aioflow.Engine` (``Engine(registry=...)``) to run and resume flows by entry
    name.
    """

    def __init__(self) -> None:
        self._records: dict[str, _Record] = {}
        self._providers: set[tuple[str, str, str]] = set()

    # Registering -------------------------------------------------------------------------

    def register(
        self, obj: object, *capabilities: str, name: str | None = None, **attributes: Any
    ) -> RegistryEntry:
        """Register a task, flow, checkpoint or factory under ``capabilities`` (words) and
        ``attributes``; return its entry.

        A factory is any other callable (a function, a ``Task`` subclass) that returns a
        task, flow or checkpoint. ``name`` defaults to the object's name (a factory's
        ``__name__``) and must be unused: a taken name raises ``ValueError``. ``prefer``
        is reserved for lookups and cannot be an attribute.
        """
        kind = _kind_of(obj)
        caps = _check_capabilities(capabilities, "register()")
        if "prefer" in attributes:
            raise ValueError("'prefer' is reserved for lookups and cannot be an attribute name")
        entry_name = _check_name(name if name is not None else _default_name(obj, kind))
        self._add(_Record(entry_name, caps, MappingProxyType(dict(attributes)), obj, kind))
        return RegistryEntry(self._records[entry_name])

    def provides(
        self, *capabilities: str, name: str | None = None, **attributes: Any
    ) -> Callable[[_T], _T]:
        """:meth:`register` as a decorator; returns the decorated object unchanged.

        Above ``@aioflow.task`` it registers the task; on a plain function or a ``Task``
        subclass it registers a factory.
        """
        _check_capabilities(capabilities, "provides()")

        def decorate(obj: _T) -> _T:
            self.register(obj, *capabilities, name=name, **attributes)
            return obj

        return decorate

    def merge(self, other: Registry) -> list[str]:
        """Add every entry of ``other``, in its order; return their names.

        All or nothing: a name both registries hold raises ``ValueError`` and adds nothing.
        """
        if not isinstance(other, Registry):
            raise TypeError(f"merge takes a Registry, not {other!r}")
        clashes = [n for n in other._records if n in self._records]
        if clashes:
            raise ValueError(f"cannot merge: the registry already has entries {_words(clashes)}")
        for record in other._records.values():
            self._add(record)
        return list(other._records)

    def _add(self, record: _Record) -> None:
        existing = self._records.get(record.name)
        if existing is not None:
            raise ValueError(
                f"the registry already has an entry named {record.name!r}"
                f" ({_entry_text(RegistryEntry(existing))}); register under another name"
                " with name=..."
            )
        self._records[record.name] = record

    # Looking up --------------------------------------------------------------------------

    def find(
        self,
        *capabilities: str,
        name: str | None = None,
        prefer: Prefer | None = None,
        **attributes: Any,
    ) -> list[RegistryEntry]:
        """Every entry that has all of ``capabilities`` and, for each attribute filter, the
        attribute with an equal value (and, with ``name``, that name).

        In registration order; with ``prefer``, best first (see :meth:`get`), entries
        without a preference value last, ties kept in registration order.
        """
        caps = _check_capabilities(capabilities, "find()")
        key = _check_prefer(prefer)
        found = [
            entry
            for entry in map(RegistryEntry, self._records.values())
            if entry._matches(caps, name, attributes)
        ]
        if key is None:
            return found
        ranked, unranked = _rank(found, key, prefer)
        return [e for _, e in ranked] + unranked

    def get(
        self,
        *capabilities: str,
        name: str | None = None,
        prefer: Prefer | None = None,
        **attributes: Any,
    ) -> RegistryEntry:
        """The one entry that :meth:`find` would return.

        A lone word and nothing else (``get("nightly")``) that is an entry's name means
        that entry, whatever capabilities other entries have: that is how the engine
        resolves a registry name, the same way on every run and resume. Otherwise the
        words are capabilities.

        No match raises :class:`~aioflow.NotFoundError`, saying what was asked and which
        capabilities exist. Several raise :class:`~aioflow.AmbiguousError` listing them,
        unless ``prefer`` orders them: an attribute name prefers the highest value of that
        attribute, a key function the highest ``key(entry)``; a missing attribute or a
        ``None`` key comes last, and a tie goes to the earliest registered. When no
        candidate has a preference value at all, the lookup is still ambiguous.
        """
        if len(capabilities) == 1 and isinstance(capabilities[0], str) and name is None:
            record = None if attributes else self._records.get(capabilities[0])
            if record is not None:
                return RegistryEntry(record)
        caps = _check_capabilities(capabilities, "get()")
        key = _check_prefer(prefer)
        found = self.find(*capabilities, name=name, **attributes)
        if len(found) == 1:
            return found[0]
        if not found:
            raise NotFoundError(self._not_found(caps, name, attributes))
        asked = _query_text(caps, name, attributes)
        listed = ", ".join(map(_entry_text, found))
        if key is None:
            raise AmbiguousError(
                f"{len(found)} registry entries match {asked}: {listed};"
                " ask for more capabilities or attributes, or pass prefer= to choose",
                candidates=[e.name for e in found],
            )
        ranked, _ = _rank(found, key, prefer)
        if not ranked:
            raise AmbiguousError(
                f"{len(found)} registry entries match {asked} and none has"
                f" a value for prefer={prefer!r}: {listed}",
                candidates=[e.name for e in found],
            )
        return ranked[0][1]

    def _not_found(self, caps: frozenset[str], name: str | None, attrs: Mapping[str, Any]) -> str:
        if len(caps) == 1 and name is None and not attrs:
            message = f"no registry entry is named {next(iter(caps))!r} or has it as a capability"
        else:
            message = f"no registry entry matches {_query_text(caps, name, attrs)}"
        if not self._records:
            return message + "; the registry is empty (nothing registered or loaded)"
        near = [e for e in map(RegistryEntry, self._records.values()) if e._matches(caps, name, {})]
        if near and attrs:
            message += "; entries with those capabilities: " + ", ".join(map(_entry_text, near))
        return message + f"; capabilities in the registry: {_words(self.capabilities)}"

    @property
    def capabilities(self) -> frozenset[str]:
        """Every capability some entry has."""
        return frozenset().union(*(r.capabilities for r in self._records.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[RegistryEntry]:
        return map(RegistryEntry, list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"<Registry with {len(self._records)} entries>"

    # Providers ---------------------------------------------------------------------------

    def load_entry_points(self, group: str = "aioflow.providers") -> LoadReport:
        """Load every provider that installed packages declare in entry point ``group``.

        A provider is a callable taking the registry (``def register(registry): ...``) or
        a :class:`Registry` whose entries are merged in. Each provider is all or nothing:
        one that fails to import, raises, or clashes with a taken name adds no entries, is
        logged as a warning and reported in ``failed`` under its entry point name; the
        others still load. A provider that loaded is not loaded again by a later call.
        """
        import importlib.metadata

        report = LoadReport([], [])
        for point in importlib.metadata.entry_points(group=group):
            key = (group, point.name, point.value)
            if key in self._providers:
                continue
            before = dict(self._records)
            try:
                self._load_provider(point.load(), point.name)
            except Exception as exc:
                self._records = before
                report.failed.append((point.name, exc))
                _LOG.warning(
                    "aioflow.provider_failed",
                    group=group,
                    provider=point.name,
                    value=point.value,
                    error=f"{type(exc).__name__}: {exc}",
                )
            else:
                self._providers.add(key)
                report.loaded.append(point.name)
                added = [n for n in self._records if n not in before]
                _LOG.debug(
                    "aioflow.provider_loaded", group=group, provider=point.name, entries=added
                )
        return report

    def _load_provider(self, provider: object, point: str) -> None:
        if isinstance(provider, Registry):
            self.merge(provider)
        elif isinstance(provider, Task | Flow | Checkpoint) or not callable(provider):
            raise TypeError(
                f"provider {point!r} loads {provider!r}; a provider must be a function taking"
                " the registry, or a Registry"
            )
        else:
            provider(self)


def _rank(
    entries: list[RegistryEntry], key: Callable[[RegistryEntry], Any], prefer: object
) -> tuple[list[tuple[Any, RegistryEntry]], list[RegistryEntry]]:
    """(entries with a preference value, best first, ties in registration order; the rest)."""
    valued = [(key(e), e) for e in entries]
    ranked = [(v, e) for v, e in valued if v is not None]
    try:
        ranked.sort(key=lambda pair: pair[0], reverse=True)
    except TypeError as exc:
        values = ", ".join(f"{e.name}={v!r}" for v, e in ranked)
        raise TypeError(f"prefer={prefer!r} gives values that cannot be compared ({values})") from (
            exc
        )
    return ranked, [e for v, e in valued if v is None]


def providers_table(registry: Registry) -> list[tuple[str, list[str], dict[str, Any]]]:
    """One row per entry, in registration order: its name, its capabilities (sorted) and
    its attributes; what ``aioflow providers`` prints."""
    return [(e.name, sorted(e.capabilities), dict(e.attributes)) for e in registry]
