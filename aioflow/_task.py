"""Tasks: the units of work, and the rules that turn a signature into requirements.

A task's requirements are the parameters of its ``execute`` (or decorated function). A
parameter with a default is optional. Parameters annotated :class:`~aioflow.Progress`,
:class:`~aioflow.External` or :class:`~aioflow.TaskContext`, or unannotated and named
``progress``, ``external`` or ``context``, are injected by the engine and never looked up
as data.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, overload

import anyio.to_thread

from ._handles import External, Progress, TaskContext

if TYPE_CHECKING:

    from ._retry import Retry


INJECT_PROGRESS: Final = "progress"
INJECT_EXTERNAL: Final = "external"
INJECT_CONTEXT: Final = "context"
_INJECTED_TYPES: dict[type, str] = {
    Progress: INJECT_PROGRESS,
    External: INJECT_EXTERNAL,
    TaskContext: INJECT_CONTEXT,
}
_INJECTED_NAMES = {
    "Progress": INJECT_PROGRESS,
    "External": INJECT_EXTERNAL,
    "TaskContext": INJECT_CONTEXT,
}
_ANNOTATION_WORD = re.compile(r"\b(Progress|External|TaskContext)\b")
_UNSET: Any = object()
# Shared by every task that injects nothing (an empty frozenset is 216 bytes apiece).
_NO_INJECTS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Requirement:
    """One value a task needs: parameter ``param`` takes symbol ``symbol``."""

    param: str
    symbol: str
    optional: bool


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    injected: str | None
    has_default: bool


def _injection(param: inspect.Parameter) -> str | None:
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return param.name if param.name in _INJECTED_NAMES.values() else None
    if isinstance(annotation, type) and annotation in _INJECTED_TYPES:
        return _INJECTED_TYPES[annotation]
    text = annotation if isinstance(annotation, str) else repr(annotation)
    match = _ANNOTATION_WORD.search(text)
    return _INJECTED_NAMES[match.group(1)] if match else None


def _params(fn: Callable[..., Any], what: str) -> tuple[_Param, ...]:
    try:
        sig = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        sig = inspect.signature(fn)
    out = []
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"{what}: positional-only parameter {p.name!r} cannot take a symbol")
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        out.append(_Param(p.name, _injection(p), p.default is not inspect.Parameter.empty))
    return tuple(out)


def _norm_provides(provides: object, name: str) -> str | tuple[str, ...] | None:
    if provides is None or isinstance(provides, str):
        if provides == "":
            raise ValueError(f"task {name!r}: provides must not be empty")
        return provides
    if isinstance(provides, Sequence) and all(isinstance(s, str) and s for s in provides):
        if len(set(provides)) != len(provides):
            raise ValueError(f"task {name!r}: provides names a symbol twice: {list(provides)!r}")
        return tuple(provides)
    raise TypeError(
        f"task {name!r}: provides must be a symbol or a tuple of symbols, not {provides!r}"
    )


class Task:
    """A unit of work: subclass it and define ``execute`` (and optionally ``revert``).

    ``execute`` and ``revert`` may be ``async def`` (run on the event loop) or plain
    ``def`` (run in a worker thread). The constructor takes the same keywords as
    :func:`task`; the default name is the class name.
    """

    name: str
    provides: str | tuple[str, ...] | None = None
    retry: Retry | None = None
    timeout: float | None = None
    weight: float = 1.0

    def __init__(
        self,
        name: str | None = None,
        *,
        provides: str | Sequence[str] | None = _UNSET,
        rebind: Mapping[str, str] | None = None,
        inject: Mapping[str, Any] | None = None,
        retry: Retry | None = _UNSET,
        timeout: float | None = _UNSET,
        weight: float = _UNSET,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name if name is not None else self._default_name()
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a task name must be a non-empty string, not {self.name!r}")
        self.provides = _norm_provides(
            type(self).provides if provides is _UNSET else provides, self.name
        )
        if retry is not _UNSET:
            self.retry = retry
        if timeout is not _UNSET:
            self.timeout = timeout
        if weight is not _UNSET:
            self.weight = weight
        self.rebind: dict[str, str] = dict(rebind or {})
        self.inject: dict[str, Any] = dict(inject or {})
        self.attributes: dict[str, Any] = dict(attributes or {})
        self._analyse()

    def _default_name(self) -> str:
        return type(self).__name__

    def _execute_fn(self) -> Callable[..., Any]:
        fn = getattr(self, "execute", None)
        if fn is None:
            raise TypeError(f"task {type(self).__name__!r} defines no execute method")
        return fn  # type: ignore[no-any-return]

    def _revert_fn(self) -> Callable[..., Any] | None:
        fn = getattr(type(self), "revert", None)
        return None if fn is None else getattr(self, "revert")  # noqa: B009

    def _analyse(self) -> None:
        self._read_signatures()
        self._configure()

    def _read_signatures(self) -> None:
        """What execute and revert take, from their signatures (the slow part: a copy
        made by :meth:`using` keeps it, as it keeps the functions)."""
        execute = self._execute_fn()
        what = f"task {self.name!r}"
        params = _params(execute, what)
        self._params = params
        self._is_async = inspect.iscoroutinefunction(execute)
        self._injects = (
            frozenset(p.injected for p in params if p.injected is not None) or _NO_INJECTS
        )
        revert = self._revert_fn()
        self._revert_params: tuple[_Param, ...] = ()
        self._revert_async = False
        if revert is not None:
            self._revert_params = _params(revert, f"revert of {what}")
            self._revert_async = inspect.iscoroutinefunction(revert)
            self._injects |= {p.injected for p in self._revert_params if p.injected is not None}
            available = {p.name for p in params} | {"result", "flow_failures"}
            unknown = [
                p.name
                for p in self._revert_params
                if p.injected is None and p.name not in available and not p.has_default
            ]
            if unknown:
                raise TypeError(
                    f"revert of {what} asks for {', '.join(map(repr, unknown))}, which it cannot"
                    f" get: it receives the execute arguments, 'result' and 'flow_failures'"
                )

    def _configure(self) -> None:
        """Check the options against the signatures and work out what the task requires."""
        if self.timeout is not None and not (
            isinstance(self.timeout, int | float) and self.timeout > 0
        ):
            raise ValueError(f"task {self.name!r}: timeout must be a positive number of seconds")
        if not (isinstance(self.weight, int | float) and self.weight >= 0):
            raise ValueError(f"task {self.name!r}: weight must be a number >= 0")
        what = f"task {self.name!r}"
        params = self._params
        if self.rebind or self.inject:
            names = {p.name for p in params}
            for label, mapping in (("rebind", self.rebind), ("inject", self.inject)):
                unknown = sorted(set(mapping) - names)
                if unknown:
                    raise ValueError(
                        f"{what}: {label} names unknown parameter(s)"
                        f" {', '.join(map(repr, unknown))};"
                        f" execute takes {', '.join(sorted(names)) or 'none'}"
                    )
            for symbol in self.rebind.values():
                if not isinstance(symbol, str) or not symbol:
                    raise ValueError(f"{what}: rebind symbols must be non-empty strings")
        self.requires: tuple[Requirement, ...] = tuple(
            Requirement(p.name, self.rebind.get(p.name, p.name), p.has_default)
            for p in params
            if p.injected is None and p.name not in self.inject
        )
        # What the engine may call with the arguments alone: an async execute given no
        # injections and no fixed values.
        self._direct: Callable[..., Awaitable[Any]] | None = (
            self._execute_fn() if self._is_async and not self.inject and not self._injects else None
        )

    @property
    def provided(self) -> tuple[str, ...]:
        """The symbols this task publishes (empty when it provides nothing)."""
        p = self.provides
        return () if p is None else (p,) if isinstance(p, str) else p

    @property
    def takes_token(self) -> bool:
        """True when execute or revert is given the ``external`` handle or the
        ``context`` (which holds it), so may hand out a completion token."""
        return INJECT_EXTERNAL in self._injects or INJECT_CONTEXT in self._injects

    @property
    def has_revert(self) -> bool:
        """True when the task defines a revert."""
        return self._revert_fn() is not None

    def using(
        self,
        name: str | None = None,
        *,
        provides: str | Sequence[str] | None = _UNSET,
        rebind: Mapping[str, str] | None = None,
        inject: Mapping[str, Any] | None = None,
        retry: Retry | None = _UNSET,
        timeout: float | None = _UNSET,
        weight: float = _UNSET,
        attributes: Mapping[str, Any] | None = None,
    ) -> Task:
        """A copy with the given changes, so one definition can appear many times in a flow."""
        clone = copy.copy(self)
        # The copy owns its mappings: changing one must never change the original.
        clone.rebind = dict(self.rebind)
        clone.inject = dict(self.inject)
        clone.attributes = dict(self.attributes)
        if name is not None:
            clone.name = name
        if provides is not _UNSET:
            clone.provides = _norm_provides(provides, clone.name)
        if rebind is not None:
            clone.rebind = dict(rebind)
        if inject is not None:
            clone.inject = dict(inject)
        if retry is not _UNSET:
            clone.retry = retry
        if timeout is not _UNSET:
            clone.timeout = timeout
        if weight is not _UNSET:
            clone.weight = weight
        if attributes is not None:
            clone.attributes = dict(attributes)
        clone._configure()  # same functions: their signatures were read already
        return clone

    # The engine's side -------------------------------------------------------------

    def _injected(
        self, params: tuple[_Param, ...], injections: Mapping[str, Any]
    ) -> dict[str, Any]:
        return {p.name: injections[p.injected] for p in params if p.injected is not None}

    def _call_execute(
        self, args: dict[str, Any], injections: Mapping[str, Any], abandon: bool = False
    ) -> Awaitable[Any]:
        """Start execute; ``abandon``: a sync task's thread is abandoned on cancellation
        (it is in a part with a deadline), as it is past its own timeout."""
        if self._direct is not None:
            return self._direct(**args)
        fn = self._execute_fn()
        kwargs = {**args, **self.inject, **self._injected(self._params, injections)}
        if self._is_async:
            return fn(**kwargs)  # type: ignore[no-any-return]
        # A thread cannot be interrupted: past its timeout (or on cancellation) a sync
        # task with a timeout is abandoned to finish on its own, and its result dropped.
        return anyio.to_thread.run_sync(
            lambda: fn(**kwargs), abandon_on_cancel=abandon or self.timeout is not None
        )

    async def _call_revert(
        self,
        args: dict[str, Any],
        result: Any,
        flow_failures: Mapping[str, Any],
        injections: Mapping[str, Any],
    ) -> None:
        fn = self._revert_fn()
        if fn is None:
            return
        available = {**args, **self.inject, "result": result, "flow_failures": dict(flow_failures)}
        kwargs = {p.name: available[p.name] for p in self._revert_params if p.name in available}
        kwargs.update(self._injected(self._revert_params, injections))
        if self._revert_async:
            await fn(**kwargs)
        else:
            await anyio.to_thread.run_sync(lambda: fn(**kwargs))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class FunctionTask(Task):
    """A task made from a function by :func:`task`; ``@t.revert`` registers its undo."""

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        **options: Any,
    ) -> None:
        self._fn = fn
        self._revert: Callable[..., Any] | None = None
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        super().__init__(name, **options)

    def _default_name(self) -> str:
        return self._fn.__name__

    def _execute_fn(self) -> Callable[..., Any]:
        return self._fn

    def _revert_fn(self) -> Callable[..., Any] | None:
        return self._revert

    def revert(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``fn`` as this task's revert (a decorator); returns ``fn`` unchanged."""
        previous, self._revert = self._revert, fn
        try:
            self._analyse()
        except BaseException:
            self._revert = previous  # a refused revert leaves the task as it was
            raise
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the plain function, for tests and direct use outside a flow."""
        return self._fn(*args, **kwargs)


@overload
def task(fn: Callable[..., Any], /) -> FunctionTask: ...


@overload
def task(
    *,
    name: str | None = None,
    provides: str | Sequence[str] | None = None,
    rebind: Mapping[str, str] | None = None,
    inject: Mapping[str, Any] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    weight: float = 1.0,
    attributes: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], FunctionTask]: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    provides: str | Sequence[str] | None = None,
    rebind: Mapping[str, str] | None = None,
    inject: Mapping[str, Any] | None = None,
    retry: Retry | None = None,
    timeout: float | None = None,
    weight: float = 1.0,
    attributes: Mapping[str, Any] | None = None,
) -> FunctionTask | Callable[[Callable[..., Any]], FunctionTask]:
    """Make a task from a function, bare (``@task``) or with keywords (``@task(provides=...)``)."""

    def wrap(f: Callable[..., Any]) -> FunctionTask:
        if not callable(f):
            raise TypeError(f"@task decorates a function, not {f!r}")
        return FunctionTask(
            f,
            name,
            provides=provides,
            rebind=rebind,
            inject=inject,
            retry=retry,
            timeout=timeout,
            weight=weight,
            attributes=attributes,
        )

    return wrap if fn is None else wrap(fn)
