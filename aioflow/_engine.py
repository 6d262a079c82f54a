"""The Engine: runs flows on anyio, records them in a journal, resumes them after a crash."""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from functools import partial
from types import TracebackType
from typing import Any, Literal, Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._codec import Codec
from ._compile import ExecGraph, compile_flow, describe_differences, weights_of
from ._errors import (
    AioflowError,
    FlowBusyError,
    FlowCancelledError,
    FlowExistsError,
    FlowFailedError,
    FlowMismatchError,
    InvalidFlowError,
    JournalError,
    LeaseLostError,
    NotFoundError,
    SerializationError,
)
from ._eta import History, appended_since, copy_progress, load_history, settled
from ._eta import from_state as progress_from_state
from ._events import Event, EventKind
from ._external import ExternalWork, _Parked
from ._failure import CANCEL, Failure, is_reserved
from ._flow import Flow
from ._handles import EXTERNAL
from ._instruments import Hooks, capture
from ._kernel import Run
from ._kernel.waits import wait_kind
from ._log import get_logger
from ._migrate import plan
from ._outcome import AtomOutcome, Outcome, Waiting
from ._owner import Ownership, check_lease, new_engine_id
from ._progress import FlowProgress
from ._replay import FlowState, migrate_state, published, replay
from ._states import AtomState, FlowStatus
from ._timers import Timers
from ._values import DEFAULT_MAX_VALUE_BYTES, check_limit
from .instrument import FlowRun
from .journal import FlowSummary, Journal, open_journal
from .journal._base import Fence

Listener = Callable[[Event], Any]
FlowRef = Flow | str
_LOG = get_logger("aioflow")
_WATCH_POLL = 0.2
_HISTORY_TTL = 30.0
_SETTLED_CACHE = 64
"""How many finished flows' progress reports an engine keeps (see :meth:`Engine.progress`)."""


def load_reference(ref: str) -> Flow:
    """Import ``"package.module:factory"`` and return the flow it names or makes."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise NotFoundError(
            f"{ref!r} is not a flow reference; one looks like 'package.module:factory'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotFoundError(
            f"cannot import {module_name!r} for flow reference {ref!r}: {exc}"
        ) from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise NotFoundError(
            f"module {module_name!r} has no {attr!r} (flow reference {ref!r})"
        ) from exc
    if not isinstance(obj, Flow) and callable(obj):
        if not _makes_a_flow(obj):
            # Calling any callable a reference names would let a caller run anything
            # (``os:abort``): only a factory that says it returns a flow is called.
            raise NotFoundError(
                f"flow reference {ref!r} names a callable that is not a flow factory:"
                " annotate its return type as a flow (def make() -> aioflow.Linear: ...)"
            )
        obj = obj()
    if not isinstance(obj, Flow):
        raise NotFoundError(f"flow reference {ref!r} gives {type(obj).__name__}, not a flow")
    return obj


_FLOW_CLASSES = frozenset({"Flow", "Linear", "Unordered", "Graph"})


@functools.lru_cache(maxsize=512)
def _makes_a_flow(factory: Any) -> bool:
    """True for a function whose return annotation is a flow class (remembered: resolving
    a postponed annotation compiles it, and a conductor asks once per job)."""
    if not inspect.isfunction(factory):
        return False
    returns = factory.__annotations__.get("return")
    if isinstance(returns, str):  # postponed (from __future__ import annotations)
        hint = returns
        try:
            returns = typing.get_type_hints(factory).get("return")
        except Exception:  # an unresolvable hint: judge by its name
            return hint.rpartition(".")[2] in _FLOW_CLASSES
    return isinstance(returns, type) and issubclass(returns, Flow)


def _checkpoint_index(graph: ExecGraph, name: str, label: str = "") -> int:
    """The node of checkpoint ``name``; InvalidFlowError naming the flow's checkpoints when
    it has none of that name (``label`` says which argument gave it, e.g. "stop_at=")."""
    index = graph.checkpoints.get(name)
    if index is None:
        raise InvalidFlowError(
            f"{label}{name!r} is not a checkpoint of flow {graph.name!r}"
            f" (it has: {', '.join(map(repr, graph.checkpoints)) or 'none'})",
            atoms=[name],
        )
    return index


class _Moved(Exception):
    """A flow changed its status between being read and being taken."""


class _Slot:
    """A flow this engine is taking or running: what a second caller in the engine joins
    instead of running it twice."""

    __slots__ = ("done", "error", "outcome")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.outcome: Outcome | None = None
        self.error: Exception | None = None

    async def join(self) -> Outcome | None:
        """The run's outcome once it ends (None when it was cancelled); raises what the
        run raised (a new :class:`FlowFailedError` for a failed flow)."""
        await self.done.wait()
        error = self.error
        if isinstance(error, FlowFailedError):
            raise FlowFailedError(error.outcome) from error.__cause__
        if error is not None:
            raise error
        return self.outcome


class FlowHandle:
    """A flow running in an entered engine's background (see :meth:`Engine.start`)."""

    def __init__(self, engine: Engine, flow_id: str) -> None:
        self.flow_id = flow_id
        self._engine = engine
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()
        self._outcome: Outcome | None = None
        self._error: BaseException | None = None
        self._parked: _Parked | None = None  # where a flow resting WAITING goes on

    async def wait(self) -> Outcome:
        """Wait for the run to end, through the waits it rests on in this engine; its
        outcome, or the error ``run`` would have raised."""
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._outcome is not None
        if self._parked is not None:
            self._outcome = await self._engine._external.through(
                self._outcome, self.flow_id, self._parked
            )
            self._parked = None
        return self._outcome

    def cancel(self) -> None:
        """Cancel the run: running atoms are cancelled and the flow is left SUSPENDED."""
        self._scope.cancel()

    @property
    def done(self) -> bool:
        """True once the run has ended, one way or another (a flow resting WAITING in
        this engine has not: a wake-up goes on with it)."""
        if not self._done.is_set():
            return False
        return self._parked is None or not self._engine._external.follows(
            self.flow_id, self._parked
        )

    @property
    def progress(self) -> FlowProgress | None:
        """The run's progress now, or None once it has ended."""
        run = self._engine._live.get(self.flow_id)
        if run is None:
            return None
        cached = self._engine._histories.get(run.graph.name)
        return run.flow_progress(self._engine._clock(), cached[1] if cached else None)


class Engine:
    """Runs flows, records every step in a journal, and resumes them after a crash.

    Use it with ``async with`` (one journal connection and one background task group for
    all runs) or without (each call opens and closes what it needs; a ``memory://``
    journal lives as long as the engine object).

    The engine owns the flows it runs (:attr:`id` in the journal), kept alive by one
    heartbeat renewed every ``lease / 3`` seconds while it runs flows; a flow whose owner
    stopped renewing for ``lease`` seconds is orphaned and may be taken over. With
    ``recover=True`` an entered engine resumes such orphans itself (see "Ownership" in
    docs/concepts.md).
    """

    def __init__(
        self,
        journal: str | Journal = "memory://",
        *,
        max_concurrency: int | None = None,
        listeners: Iterable[Listener] = (),
        codec: Codec | str | None = None,
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        secret: str | bytes | None = None,
        registry: Any = None,
        durability: Literal["strict", "batched"] = "strict",
        progress_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        lease: float = 30.0,
        recover: bool = False,
        instruments: Iterable[Any] = (),
    ) -> None:
        if durability not in ("strict", "batched"):
            raise ValueError(f"durability must be 'strict' or 'batched', not {durability!r}")
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ValueError(f"max_concurrency must be a positive integer, not {max_concurrency!r}")
        if not progress_interval >= 0:
            raise ValueError(f"progress_interval must be >= 0, not {progress_interval!r}")
        self.lease = check_lease(lease)
        instruments = list(instruments)
        self._hooks = Hooks(instruments) if instruments else None
        """The hooks of the instruments (aioflow.instrument); None without any."""
        self.recover = bool(recover)
        self.id = new_engine_id()
        """This engine's id: the owner the journal records for the flows it runs."""
        self.journal: Journal = open_journal(journal, codec=codec)
        self.journal.clock = clock
        self.max_concurrency = max_concurrency
        self.durability = durability
        self.progress_interval = float(progress_interval)
        self.max_value_bytes = check_limit(max_value_bytes)
        """The most bytes of encoded text an atom's result may take (None: no limit)."""
        self.secret = secret
        self.registry = registry
        self._clock = clock
        self._sleep = sleep
        self._sync_listeners: list[Listener] = []
        self._async_listeners: list[Listener] = []
        for fn in listeners:
            if not callable(fn):
                raise TypeError(f"a listener must be callable, not {fn!r}")
            is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)  # noqa: B004
            )
            (self._async_listeners if is_async else self._sync_listeners).append(fn)
        self._live: dict[str, Run] = {}
        self._slots: dict[str, _Slot] = {}
        # Renewed in real time: an injected sleep that returns at once must not make the
        # heartbeat spin, and a test clock moved by days must not make it beat once per
        # lease of those days. Its expiry is on the engine's clock (renewed before each
        # taking when a clock jump left it short), so a clock that jumps ahead lets other
        # engines take this one's running flows over, as a real pause would.
        self._ownership = Ownership(self.journal, self.id, self.lease, clock, anyio.sleep)
        self._histories: dict[str, tuple[float, History | None]] = {}
        # progress() of flows that can no longer change by themselves: flow id ->
        # (last seq, report); a later event makes progress() read the journal again.
        self._settled: dict[str, tuple[int, FlowProgress]] = {}
        self._watchers: dict[str, list[MemoryObjectSendStream[Event]]] = {}
        self._hosted = False  # a conductor serves this engine's runs (see _services)
        self._async_streams: dict[str, MemoryObjectSendStream[Event]] = {}
        self._stack: AsyncExitStack | None = None
        self._session_owner: int | None = None
        self._tg: TaskGroup | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._external = ExternalWork(self)
        # Every deadline of this engine (waits, sleeps, parts, resting flows): one task.
        self._timers = Timers(clock, sleep)

    # Lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise AioflowError("this engine is already entered")
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            if not self.journal.is_open:
                await stack.enter_async_context(self.journal)
            self._tg = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        try:
            await self._external.mark_mail()
        except JournalError as exc:  # the store is away: the first look sets it
            _LOG.warning("aioflow.mailbox_unreadable", error=str(exc))
        self._tg.start_soon(self._timers.serve, name="aioflow timers")
        self._tg.start_soon(
            self._ownership.run,
            self._busy,
            self._recover_orphans if self.recover else None,
            name="aioflow heartbeat",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        assert stack is not None and self._tg is not None
        self._tg.cancel_scope.cancel()
        self._tg = None
        if isinstance(exc, Exception):
            # An error of the caller's block goes on as it is: handing it to the task
            # group would wrap it in an ExceptionGroup that `except FlowFailedError`
            # around the block no longer catches.
            await stack.__aexit__(None, None, None)
            return
        await stack.__aexit__(exc_type, exc, tb)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[None]:
        owner = self._session_owner
        if owner is not None and owner != anyio.get_current_task().id and self._stack is None:
            # The journal was opened for a call of another task and will be closed when
            # that call ends, under this one's feet.
            raise AioflowError(
                "this engine is already running a call in another task; to run flows, "
                "complete waits or watch from several tasks at once, enter it: "
                "async with Engine(...) as engine"
            )
        if self.journal.is_open:
            yield
            return
        self._session_owner = anyio.get_current_task().id
        try:
            async with self.journal:
                await self._external.mark_mail()
                yield
        finally:
            self._session_owner = None

    # Running ---------------------------------------------------------------------------

    def _resolve(self, flow: FlowRef) -> tuple[Flow, str | None]:
        if isinstance(flow, Flow):
            return flow, None
        if isinstance(flow, str):
            if ":" in flow:
                return load_reference(flow), flow
            if self.registry is not None:
                entry = self.registry.get(flow)
                built = entry.build()
                if not isinstance(built, Flow):
                    raise NotFoundError(
                        f"registry entry {entry.name!r} holds a {entry.kind}, not a flow;"
                        " only a flow can be run by name"
                    )
                # The entry's own name, not the query, so a resume finds the same entry.
                return built, entry.name
            raise NotFoundError(
                f"no flow named {flow!r}: pass a flow, a reference like 'package.module:factory',"
                " or give the engine a registry"
            )
        raise TypeError(f"expected a flow or a flow reference string, not {flow!r}")

    def _new_run(self, graph: Any, flow_id: str, inputs: Mapping[str, Any], seq: int = 0) -> Run:
        run = Run(
            graph=graph,
            flow_id=flow_id,
            inputs=inputs,
            journal=self.journal,
            publish=self._publish if (self._sync_listeners or self._async_listeners) else None,
            clock=self._clock,
            sleep=self._sleep,
            strict=self.durability == "strict",
            progress_interval=self.progress_interval,
            seq=seq,
            max_value_bytes=self.max_value_bytes,
            timers=self._timers,
        )
        run.waits.watch_mail = self._external.watch_mail
        run.hooks = self._hooks
        return run

    def _prepare(
        self,
        flow: FlowRef,
        inputs: Mapping[str, Any] | None,
        flow_id: str | None,
        stop_at: str | None,
    ) -> tuple[Run, dict[str, Any]]:
        flow_obj, ref = self._resolve(flow)
        if inputs is not None and not isinstance(inputs, Mapping):
            raise TypeError(f"inputs must be a mapping of symbol -> value, not {inputs!r}")
        inputs = dict(inputs or {})
        bad = [k for k in inputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"input symbols must be strings, not {bad!r}")
        graph = compile_flow(flow_obj, inputs.keys())
        if stop_at is not None:
            _checkpoint_index(graph, stop_at, "stop_at=")
        if not flow_id:
            import uuid  # here, not at the top: uuid loads platform at import

            flow_id = uuid.uuid4().hex
        run = self._new_run(graph, flow_id, inputs)
        run.stop_at = stop_at
        weights = weights_of(graph)
        start = {
            "name": graph.name,
            "ref": ref,
            "fingerprint": graph.fingerprint,
            "structure": graph.structure_json,
            "inputs": inputs,
            "weights": weights,
        }
        trace = capture()  # started inside a span: the flow's runs are its children
        if trace:
            start["trace"] = run.trace = trace
        return run, start

    async def run(
        self,
        flow: FlowRef,
        inputs: Mapping[str, Any] | None = None,
        *,
        flow_id: str | None = None,
        stop_at: str | None = None,
    ) -> Outcome:
        """Run ``flow`` to its end (or to ``stop_at``) and return its :class:`Outcome`.

        Raises :class:`FlowFailedError` when an atom failed and the flow was reverted.
        Cancelling the caller leaves the flow SUSPENDED and resumable.
        """
        return await self._run_flow(flow, inputs, flow_id, stop_at, new=flow_id is None)

    async def _run_flow(
        self,
        flow: FlowRef,
        inputs: Mapping[str, Any] | None,
        flow_id: str | None,
        stop_at: str | None,
        *,
        new: bool,
    ) -> Outcome:
        """:meth:`run`; ``new`` when ``flow_id`` is known to name no flow of the journal
        (a fresh uuid, or a job's first claim), so that no read asks."""
        run, start = self._prepare(flow, inputs, flow_id, stop_at)
        async with self._session():
            with self._holding(run.flow_id) as slot:
                await self._begin(run, start, check=not new)
                slot.outcome = await self._drive(run)
                return slot.outcome

    def _hold(self, flow_id: str) -> _Slot:
        """Reserve ``flow_id`` for one run in this engine (before anything awaits)."""
        if flow_id in self._slots:
            raise AioflowError(f"flow {flow_id} is already running in this engine")
        slot = self._slots[flow_id] = _Slot()
        return slot

    @contextmanager
    def _holding(self, flow_id: str) -> Iterator[_Slot]:
        """Hold ``flow_id`` for one run in this engine; what the block raises is what a
        joining caller gets."""
        slot = self._hold(flow_id)
        try:
            yield slot
        except Exception as exc:
            slot.error = exc
            raise
        finally:
            self._let_go(flow_id, slot)

    def _let_go(self, flow_id: str, slot: _Slot) -> None:
        if self._slots.get(flow_id) is slot:
            del self._slots[flow_id]
            self._external.let_go(flow_id)  # wakes it if a completion came meanwhile
        slot.done.set()

    def _busy(self) -> bool:
        """True while this engine runs (or takes) flows: its heartbeat is renewed."""
        return bool(self._slots)

    async def _begin(self, run: Run, start: dict[str, Any], *, check: bool) -> None:
        if check:
            try:
                await self.journal.summary(run.flow_id)  # one row, not the flow's events
            except NotFoundError:
                pass
            else:
                raise FlowExistsError(
                    f"flow {run.flow_id} already exists in the journal; resume it instead"
                )
        await self._ownership.ensure()
        # A new flow is made owned by this engine, generation 1, by its first commit.
        self._fence(run, 1)
        try:
            run.set_flow(FlowStatus.RUNNING, start)
        except SerializationError as exc:
            self.journal.set_fence(run.flow_id, None)
            raise SerializationError(
                f"the inputs of flow {run.flow_id} cannot be stored: {exc}"
            ) from exc

    def _fence(self, run: Run, generation: int) -> None:
        fence = run.fence = Fence(self.id, generation)
        self.journal.set_fence(run.flow_id, fence)

    async def _take(
        self,
        flow_id: str,
        flow: FlowRef | None = None,
        *,
        graph: ExecGraph | None = None,
        only: FlowStatus | None = None,
        state: FlowState | None = None,
        migration: tuple[dict[str, str]] | None = None,
    ) -> Run | None:
        """The restored run of ``flow_id``, taken by this engine unless the flow is final.

        With ``only``, a flow in another status is left as it is (None). ``state`` is the
        flow's state when the caller has just read it. Raises :class:`FlowBusyError`
        when a live engine owns the flow elsewhere. ``migration`` (the renames) restores
        it under a changed ``flow`` when :func:`aioflow._migrate.plan` allows it.
        """
        if state is None:
            state = replay(flow_id, await self.journal.load(flow_id))
        if only is not None and state.status is not only:
            return None
        if state.status.is_final:
            if migration is not None:
                raise AioflowError(
                    f"flow {flow_id} has ended ({state.status.value}); there is nothing to"
                    " migrate"
                )
            return self._restore(state, flow, graph)
        await self._ownership.ensure()
        generation, last_seq = await self.journal.take(flow_id, self.id)
        try:
            if last_seq != state.last_seq:  # it moved between our read and our taking
                state = replay(flow_id, await self.journal.load(flow_id))
                if only is not None and state.status is not only:
                    raise _Moved
            run = self._restore(state, flow, graph, migration)
            # A cancel asked while no engine here ran the flow: it reverts from now on.
            cancel = None if run.failing else await self._cancel_request(flow_id)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._give_up(flow_id, generation)
            if isinstance(exc, _Moved):
                return None
            raise
        self._fence(run, generation)
        if cancel is not None:
            run.reverter.cancel_flow(cancel)
        return run

    async def _cancel_request(self, flow_id: str) -> Failure | None:
        """The failure a cancel of flow ``flow_id`` asked for, if one waits in its mailbox."""
        found = await self.journal.next_message(flow_id, CANCEL)
        return None if found is None else Failure.from_dict(found[1])

    async def _give_up(self, flow_id: str, generation: int) -> None:
        """Give up a flow taken for nothing (or whose run could not write its end)."""
        try:
            await self.journal.disown(flow_id, self.id, generation)
        except JournalError:
            self._ownership.give_up(flow_id, generation)  # when the journal is back

    async def start(
        self,
        flow: FlowRef,
        inputs: Mapping[str, Any] | None = None,
        *,
        flow_id: str | None = None,
        stop_at: str | None = None,
    ) -> FlowHandle:
        """Start ``flow`` in the entered engine's background and return a handle at once."""
        tg = self._require_entered("start")
        run, start = self._prepare(flow, inputs, flow_id, stop_at)
        slot = self._hold(run.flow_id)
        try:
            await self._begin(run, start, check=flow_id is not None)
        except BaseException:
            self._let_go(run.flow_id, slot)
            raise
        handle = FlowHandle(self, run.flow_id)
        tg.start_soon(self._background, handle, run, slot, name=f"flow {run.flow_id}")
        return handle

    async def _background(self, handle: FlowHandle, run: Run, slot: _Slot) -> None:
        drive = self._drive(run)
        try:
            with handle._scope:
                try:
                    outcome = slot.outcome = await drive
                except Exception as exc:
                    slot.error = exc
                    raise
                finally:
                    self._let_go(run.flow_id, slot)
                # A flow resting WAITING is followed by handle.wait() itself, so that a
                # thousand sleeping flows do not keep a thousand tasks.
                handle._outcome = outcome
                handle._parked = self._external.resting(run.flow_id)
        except Exception as exc:
            handle._error = exc
        finally:
            drive.close()  # never awaited when cancelled before it started
            if handle._outcome is None and handle._error is None:
                handle._error = anyio.get_cancelled_exc_class()("the flow run was cancelled")
            handle._done.set()

    def _require_entered(self, what: str) -> TaskGroup:
        if self._tg is None:
            raise AioflowError(f"engine.{what} needs an entered engine: async with Engine(...)")
        return self._tg

    async def resume(
        self,
        flow_id: str,
        flow: FlowRef | None = None,
        *,
        stop_at: str | None = None,
        migrate: bool = False,
        renames: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Continue flow ``flow_id`` from its journal: finished atoms keep their results,
        atoms that were running run again, a flow that was reverting goes on reverting.

        With ``migrate=True`` a resting flow goes on under a changed definition ``flow``
        when the change keeps what already happened true (``renames`` maps old atom
        names to new ones); otherwise :class:`FlowMismatchError` lists every conflict and
        nothing changes. The resume's event records the migration (see
        ``docs/versioning.md``)."""
        if renames and not migrate:
            raise ValueError("renames= applies to a migration: pass migrate=True too")
        if migrate and flow is None:
            raise ValueError("migrate=True needs the new flow definition (flow=...)")
        async with self._session():
            slot = self._slots.get(flow_id)
            if slot is not None:  # it runs here: join that run
                if migrate:
                    raise FlowBusyError(flow_id, self.id, None)
                joined = await slot.join()
                return joined if joined is not None else await self.outcome(flow_id)
            with self._holding(flow_id) as slot:
                migration = (dict(renames or {}),) if migrate else None
                run = await self._take(flow_id, flow, migration=migration)
                assert run is not None
                slot.outcome = await self._continue(run, stop_at)
                return slot.outcome

    async def check_migration(
        self, flow_id: str, flow: FlowRef, *, renames: Mapping[str, str] | None = None
    ) -> list[str]:
        """Why flow ``flow_id`` cannot be migrated to ``flow`` (``resume(...,
        migrate=True)``), one line per conflict; an empty list when it can. Changes
        nothing (``aioflow check FLOW_ID REF`` prints this)."""
        async with self._session():
            state = replay(flow_id, await self.journal.load(flow_id))
        flow_obj, _ = self._resolve(flow)
        graph = compile_flow(flow_obj, state.inputs.keys())
        if graph.fingerprint == state.fingerprint and not renames:
            return []
        return plan(state, graph, renames).conflicts

    async def _continue(self, run: Run, stop_at: str | None) -> Outcome:
        """Drive a restored run on from where its journal left it."""
        if stop_at is not None:
            _checkpoint_index(run.graph, stop_at, "stop_at=")
        run.stop_at = stop_at
        if run.status.is_final:
            return self._finish(run)
        try:
            if run.revert_to is not None:  # an interrupted revert_to: finish it
                i = _checkpoint_index(run.graph, run.revert_to)
                run.set_flow(
                    FlowStatus.REVERTING, {"resumed": True, "revert_to": run.revert_to}
                )
                begin: Callable[[TaskGroup], None] | None = partial(run.rewind, i)
            else:
                details: dict[str, Any] = {"resumed": True}
                if run.migrated is not None:  # journaled with the resume: replay folds it
                    details["migrated"] = run.migrated
                    _LOG.info(
                        "aioflow.flow_migrated",
                        flow_id=run.flow_id,
                        old=run.migrated["from"],
                        new=run.migrated["to"],
                    )
                run.set_flow(
                    FlowStatus.REVERTING if run.failing else FlowStatus.RUNNING, details
                )
                run.resume_events()
                begin = None
        except BaseException:
            await self._give_back(run)  # taken for nothing: nobody else could take it
            raise
        return await self._drive(run, begin)

    async def revert_to(
        self, flow_id: str, checkpoint: str, flow: FlowRef | None = None
    ) -> Outcome:
        """Move suspended flow ``flow_id`` back to ``checkpoint``: revert every atom that
        finished after it, dependents first (newest first in a Linear), and leave the
        flow SUSPENDED there, ready to run on from it.

        The intent is journaled first, so a revert interrupted by a crash or a
        cancellation is finished by :meth:`resume`. A revert that raises leaves its atom
        REVERT_FAILURE and the flow FAILED, as in any failure.
        """
        async with self._session():
            with self._holding(flow_id) as slot:
                run = await self._suspended(flow_id, flow, "revert_to")
                try:
                    i = _checkpoint_index(run.graph, checkpoint)
                    if run.states[i] is not AtomState.SUCCESS:
                        raise AioflowError(
                            f"flow {flow_id} has not reached checkpoint {checkpoint!r}, so it"
                            " cannot be reverted to it; goto() moves a flow forward to a"
                            " checkpoint"
                        )
                except AioflowError:
                    await self._give_back(run)
                    raise
                slot.outcome = await self._move_back(run, i)
                return slot.outcome

    async def _move_back(self, run: Run, i: int) -> Outcome:
        checkpoint = run.nodes[i].name
        run.revert_to = checkpoint
        run.set_flow(FlowStatus.REVERTING, {"revert_to": checkpoint})
        return await self._drive(run, lambda tg: run.rewind(i, tg))

    async def goto(self, flow_id: str, checkpoint: str, flow: FlowRef | None = None) -> Outcome:
        """Move suspended flow ``flow_id`` to ``checkpoint``: back (as :meth:`revert_to`)
        when it was reached, else forward (as :meth:`resume` with ``stop_at``)."""
        async with self._session():
            with self._holding(flow_id) as slot:
                run = await self._suspended(flow_id, flow, "goto")
                try:
                    i = _checkpoint_index(run.graph, checkpoint)
                except InvalidFlowError:
                    await self._give_back(run)
                    raise
                if run.states[i] is AtomState.SUCCESS:
                    slot.outcome = await self._move_back(run, i)
                else:
                    slot.outcome = await self._continue(run, checkpoint)
                return slot.outcome

    async def _suspended(self, flow_id: str, flow: FlowRef | None, what: str) -> Run:
        """The restored run of ``flow_id``, taken by this engine, which must rest
        SUSPENDED and not be half way through a revert."""
        state = replay(flow_id, await self.journal.load(flow_id))
        if state.status is not FlowStatus.SUSPENDED:
            raise AioflowError(
                f"flow {flow_id} is {state.status.value}; {what} moves only a SUSPENDED flow"
                " (stop it at a checkpoint with stop_at, or cancel it, first)"
            )
        run = await self._take(flow_id, flow, only=FlowStatus.SUSPENDED, state=state)
        if run is None:
            raise AioflowError(f"flow {flow_id} was resumed elsewhere meanwhile; {what} refused")
        if run.failing or run.revert_to is not None:
            await self._give_back(run)
            raise AioflowError(
                f"flow {flow_id} was interrupted while reverting; resume() it to finish that first"
            )
        return run

    async def _give_back(self, run: Run) -> None:
        """Give up a flow taken for a move that turned out not to be possible."""
        if run.fence is not None:
            self.journal.set_fence(run.flow_id, None)
            with anyio.CancelScope(shield=True):
                await self._give_up(run.flow_id, run.fence.generation)

    def _restore(
        self,
        state: FlowState,
        flow: FlowRef | None,
        graph: ExecGraph | None = None,
        migration: tuple[dict[str, str]] | None = None,
    ) -> Run:
        if graph is None:
            if flow is None:
                if state.ref is None:
                    raise AioflowError(
                        f"flow {state.flow_id} was not started from a reference; pass the flow"
                        " object to resume it"
                    )
                flow = state.ref
            flow_obj, _ = self._resolve(flow)
            graph = compile_flow(flow_obj, state.inputs.keys())
        record = None
        if migration is not None and (graph.fingerprint != state.fingerprint or migration[0]):
            found = plan(state, graph, migration[0])
            if found.conflicts:
                raise FlowMismatchError(state.flow_id, found.conflicts)
            record = found.record
            migrate_state(state, record)
        if graph.fingerprint != state.fingerprint:
            raise FlowMismatchError(
                state.flow_id, describe_differences(state.structure, graph.structure)
            )
        run = self._new_run(graph, state.flow_id, state.inputs, seq=state.last_seq)
        run.restore(state)
        run.migrated = record
        return run

    async def _drive(self, run: Run, begin: Callable[[TaskGroup], None] | None = None) -> Outcome:
        if self.max_concurrency is not None:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(self.max_concurrency)
            run.limiter = self._limiter
        # engine.cancel stops the run through this scope (see _stop).
        stop = run.stop = anyio.CancelScope()
        self._live[run.flow_id] = run
        # A refused or lost write of this flow stops this run, and only it.
        lost = anyio.CancelScope()
        fence = run.fence
        if fence is not None:
            fence.on_lost = lambda _error: lost.cancel()
        # After registering: a completion must find the run live. Only a flow whose
        # tasks can hand out a token needs the signer (reading it may cost a commit).
        if run.waits.signer is None and run.graph.issues_tokens:
            try:
                run.waits.signer = await self._external.signer()
            except BaseException:
                self._live.pop(run.flow_id, None)
                raise
        send = None
        heartbeat: anyio.CancelScope | None = None
        timers: anyio.CancelScope | None = None
        polls: anyio.CancelScope | None = None
        info = self._run_started(run) if self._hooks is not None else None
        try:
            if self.durability == "strict":
                # The flow's start (its inputs) is what its first atoms build on: commit it
                # before they run, or a crash could leave their work done for a flow the
                # journal does not know.
                await self._settle(run)
            async with anyio.create_task_group() as outer:
                if self._tg is None and not self._hosted:  # this call renews the heartbeat
                    heartbeat = anyio.CancelScope()
                    outer.start_soon(self._beat, heartbeat)
                if self._tg is None and not self._timers.serving:  # and serves the timers
                    timers = anyio.CancelScope()
                    outer.start_soon(self._serve_timers, timers)
                if self._async_listeners:
                    send, receive = anyio.create_memory_object_stream[Event](math.inf)
                    self._async_streams[run.flow_id] = send
                    outer.start_soon(self._dispatch, receive)
                if self._tg is None and not self._hosted:  # this looks for cancel requests
                    polls = anyio.CancelScope()
                    outer.start_soon(self._external.poll_mail, polls)
                else:
                    self._external.watch_mail()
                try:
                    with lost, stop:
                        async with anyio.create_task_group() as tg:
                            (begin or run.begin)(tg)
                except BaseExceptionGroup as group:
                    if fence is None or not fence.lost:
                        journal_errors = group.subgroup((JournalError, LeaseLostError))
                        if journal_errors is not None and len(journal_errors.exceptions) == len(
                            group.exceptions
                        ):
                            raise journal_errors.exceptions[0] from None
                        raise
                except (JournalError, LeaseLostError):
                    if fence is None or not fence.lost:
                        raise
                run.end_timers()
                if fence is None or not fence.lost:
                    if not stop.cancel_called:  # else engine.cancel stopped it: see below
                        run.set_flow(run.final_status(), {"span": run.span} if run.span else None)
                    await self._settle(run)
                if send is not None:
                    send.close()
                for scope in (heartbeat, timers, polls):
                    if scope is not None:
                        scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                if not run.status.is_resting and (fence is None or not fence.lost):
                    details: dict[str, Any] = {"cancelled": True}
                    if run.revert_to is not None:  # resume() finishes the move back
                        details["revert_to"] = run.revert_to
                    with suppress(JournalError, LeaseLostError):  # the fence says why
                        run.set_flow(FlowStatus.SUSPENDED, details)
                with suppress(JournalError, LeaseLostError):
                    await self._settle(run)
                if fence is not None and fence.lost:
                    self._lost(run, fence)
            raise
        except BaseException as exc:
            if info is not None:
                info.error = exc
            if fence is not None and fence.lost and isinstance(exc, Exception):
                raise self._lost(run, fence) from None
            raise
        finally:
            if info is not None:
                self._run_ended(run, info)
            run.end_timers()
            self._live.pop(run.flow_id, None)
            self._async_streams.pop(run.flow_id, None)
            if send is not None:
                send.close()
            for stream in self._watchers.pop(run.flow_id, []):
                stream.close()
            if fence is not None and self.journal.fence_of(run.flow_id) is fence:
                self.journal.set_fence(run.flow_id, None)
            run.ended.set()
        if fence is not None and fence.lost:
            raise self._lost(run, fence)
        if stop.cancel_called and run.cancel_failure is not None:
            return await self._revert_cancelled(run, run.cancel_failure)
        news: set[str] = set()
        if run.status in (FlowStatus.WAITING, FlowStatus.SUSPENDED):
            # A message or a cancel sent from elsewhere while the run was ending found it
            # running and was left to it: look once now that it rests (a later one finds
            # it resting), with one query on the mailbox.
            news = await self.journal.mail_topics(run.flow_id, run.waits.mail)
            if CANCEL in news:
                return await self._cancel_rested(run)
        if run.status is FlowStatus.WAITING:
            if run.waits.signer is None:  # the outcome lists the open waits with their tokens
                run.waits.signer = await self._external.signer()
            self._external.rest(run)
        if not news.isdisjoint(run.waits.receivers):
            await self._external.deliver_resting(run.flow_id)
        return self._finish(run)

    def _run_started(self, run: Run) -> FlowRun:
        """Tell the instruments that ``run`` begins (see aioflow.instrument)."""
        assert self._hooks is not None
        info = run.flow_run = FlowRun(
            run.flow_id,
            run.graph.name,
            resumed=run.restored,
            parent=run.trace,
            earlier=tuple(run.spans),
        )
        run.span = self._hooks.flow_started(info)
        return info

    def _run_ended(self, run: Run, info: FlowRun) -> None:
        assert self._hooks is not None
        if info.error is None and run.status.is_resting:
            info.status = run.status
        self._hooks.flow_ended(info)

    async def _revert_cancelled(self, run: Run, failure: Failure) -> Outcome:
        """Revert a run that ``engine.cancel`` stopped (its atoms were cancelled and are
        PENDING again): restored afresh from what the journal now says, under the same
        ownership, and driven to REVERTED."""
        fence = run.fence
        assert fence is not None
        state = replay(run.flow_id, await self.journal.load(run.flow_id))
        fresh = self._restore(state, None, run.compiled)
        self._fence(fresh, fence.generation)
        fresh.waits.signer = run.waits.signer
        fresh.reverter.cancel_flow(failure)
        return await self._drive(fresh)

    async def _cancel_rested(self, run: Run) -> Outcome:
        """A run came to rest with a cancel request waiting: take the flow again (the
        request is applied as it is taken) and revert it."""
        taken = await self._take(run.flow_id, graph=run.compiled)
        if taken is None or taken.status.is_final:
            return self._finish(run)
        taken.waits.signer = run.waits.signer
        return await self._continue(taken, None)

    @asynccontextmanager
    async def _services(self) -> AsyncIterator[None]:
        """For a caller that runs many flows at once in an engine it did not enter (a
        conductor): one heartbeat, one timer server and one mailbox poll for all of them
        while it runs, rather than each run's own. A run's own timer server ends with
        it, and a run of another job meanwhile would miss its deadlines."""
        if self._tg is not None or self._hosted:
            yield
            return
        async with anyio.create_task_group() as tg:
            self._hosted = True
            try:
                if not self._timers.serving:
                    tg.start_soon(self._timers.serve, name="aioflow timers")
                tg.start_soon(self._ownership.run, self._busy, name="aioflow heartbeat")
                tg.start_soon(self._external.poll_mail, anyio.CancelScope(), name="aioflow mail")
                yield
            finally:
                self._hosted = False
                tg.cancel_scope.cancel()

    async def _serve_timers(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self._timers.serve()

    async def _settle(self, run: Run) -> None:
        """Wait until this run's events so far are committed (or refused: its fence says
        so); another flow's failed write is none of this run's business."""
        if run.last_ticket:
            try:
                await self.journal.wait_durable(run.last_ticket)
            except (JournalError, LeaseLostError):
                if run.fence is None or not run.fence.lost:
                    raise

    async def _beat(self, scope: anyio.CancelScope) -> None:
        with scope:
            await self._ownership.run(self._busy)

    def _lost(self, run: Run, fence: Fence) -> Exception:
        """The error a run whose fence was lost ends with. A flow that lost events to a
        failing store is given up (so it is orphaned, and recovery takes it) as soon as
        the journal can take that write; one that was taken over is not ours to touch."""
        error = fence.failure
        assert error is not None
        if not isinstance(error, LeaseLostError):
            self._ownership.give_up(run.flow_id, fence.generation)
        _LOG.warning(
            "aioflow.flow_run_lost",
            flow_id=run.flow_id,
            error_type=type(error).__name__,
            error=str(error),
        )
        return error if isinstance(error, Exception) else JournalError(str(error))

    def _finish(self, run: Run) -> Outcome:
        outcome = run.outcome()
        if outcome.status in (FlowStatus.REVERTED, FlowStatus.FAILED):
            error = FlowFailedError(outcome)
            raise error from run.first_error
        return outcome

    # Ownership ---------------------------------------------------------------------------

    async def _recover_orphans(self) -> None:
        """Resume, in the background, each orphaned flow this engine can build (one that
        was started from a reference or a registry name). Another engine recovering at
        the same time takes some of them first: those are left to it."""
        tg = self._tg
        if tg is None:
            return
        for summary in await self.journal.orphans():
            if summary.flow_id in self._slots or summary.ref is None:
                continue
            _LOG.info("aioflow.recovering", flow_id=summary.flow_id, owner=summary.owner)
            tg.start_soon(self._recover, summary.flow_id, name=f"recover flow {summary.flow_id}")

    async def _recover(self, flow_id: str) -> None:
        try:
            await self.resume(flow_id)
        except FlowBusyError:
            pass  # another engine took it first
        except FlowFailedError as exc:
            _LOG.info("aioflow.recovered", flow_id=flow_id, status=exc.outcome.status.value)
        except Exception as exc:
            _LOG.warning("aioflow.recovery_failed", flow_id=flow_id, error=str(exc))

    async def wait(self, flow_id: str, timeout: float | None = None) -> Outcome:  # noqa: ASYNC109
        """Wait until flow ``flow_id`` rests (SUCCESS, REVERTED, FAILED, SUSPENDED or
        WAITING), wherever it runs: here, in another process, or in a later resume.

        Returns its outcome, or raises :class:`FlowFailedError` as ``run`` would;
        :class:`TimeoutError` once ``timeout`` seconds have passed;
        :class:`NotFoundError` for a flow the journal does not know.
        """
        with anyio.fail_after(timeout):
            while True:
                slot = self._slots.get(flow_id)
                if slot is not None:
                    await slot.done.wait()
                    continue
                async with self._session():
                    summary = await self.journal.summary(flow_id)
                if summary.status.is_resting:
                    outcome = await self.outcome(flow_id)
                    if outcome.status in (FlowStatus.REVERTED, FlowStatus.FAILED):
                        raise FlowFailedError(outcome)
                    return outcome
                await anyio.sleep(_WATCH_POLL)

    # Events ----------------------------------------------------------------------------

    def _publish(self, event: Event) -> None:
        for fn in self._sync_listeners:
            try:
                fn(event)
            except Exception:
                _LOG.exception("aioflow.listener_failed", listener=repr(fn), flow_id=event.flow_id)
        stream = self._async_streams.get(event.flow_id)
        if stream is not None:
            # Closed only when the run's listeners have stopped: the run is ending.
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                stream.send_nowait(event)
        watchers = self._watchers.get(event.flow_id)
        for watcher in list(watchers or ()):
            try:
                watcher.send_nowait(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # A watch whose reader went away: it must never break the flow.
                watchers.remove(watcher)  # type: ignore[union-attr]

    async def _dispatch(self, receive: Any) -> None:
        async with receive:
            async for event in receive:
                for fn in self._async_listeners:
                    try:
                        await fn(event)
                    except Exception:
                        _LOG.exception(
                            "aioflow.listener_failed", listener=repr(fn), flow_id=event.flow_id
                        )

    async def watch(self, flow_id: str) -> AsyncIterator[Event]:
        """Yield the flow's events, from the first, live, until the flow rests.

        Works for a flow this engine runs and for one another process runs against the
        same journal (then the journal is followed; that ends, too, when the flow is
        orphaned: ``(await journal.summary(flow_id)).orphaned`` tells it apart).
        """
        async with self._session():
            run = self._live.get(flow_id)
            if run is None:
                async for event in self._follow(flow_id):
                    yield event
                return
            send, receive = anyio.create_memory_object_stream[Event](math.inf)
            watchers = self._watchers.setdefault(flow_id, [])
            watchers.append(send)
            run.publish = self._publish
            last = 0
            async with receive, _unwatched(watchers, send):
                with suppress(JournalError, LeaseLostError):  # what was refused is not read
                    await self.journal.flush()
                async for event in self.journal.events(flow_id):
                    last = event.seq
                    yield event
                async for event in receive:
                    if event.seq <= last and event.kind is not EventKind.PROGRESS:
                        continue
                    last = max(last, event.seq)
                    yield event
                    if (
                        event.kind is EventKind.FLOW
                        and isinstance(event.state, FlowStatus)
                        and (event.state.is_resting)
                    ):
                        return

    async def _follow(self, flow_id: str) -> AsyncIterator[Event]:
        last = 0
        await self.journal.load(flow_id)  # NotFoundError for an unknown flow
        rested = False
        while True:
            async for event in self.journal.events(flow_id, after=last):
                last = event.seq
                yield event
                # A rest in the history may have been resumed since: only the last
                # committed event says whether the flow rests now.
                rested = (
                    event.kind is EventKind.FLOW
                    and isinstance(event.state, FlowStatus)
                    and event.state.is_resting
                )
            if rested:
                return
            summary = await self._summary(flow_id)
            if summary is not None and summary.orphaned:
                return  # its owner died: nothing will happen until it is taken over
            await anyio.sleep(_WATCH_POLL)

    # Looking at flows --------------------------------------------------------------------

    async def progress(self, flow_id: str) -> FlowProgress:
        """How far flow ``flow_id`` is, live or read back from the journal (also while
        another process runs it). The ETA also draws on the journal's earlier successful
        runs of a flow with the same name (see ``docs/progress.md``)."""
        run = self._live.get(flow_id)
        if run is not None:
            history = await self._history(run.graph.name, flow_id)
            return run.flow_progress(self._clock(), history)
        async with self._session():
            cached = self._settled.get(flow_id)
            if cached is not None:
                if not await appended_since(self.journal, flow_id, cached[0]):
                    return copy_progress(cached[1])
                del self._settled[flow_id]
            events = await self.journal.load(flow_id)
            state = replay(flow_id, events)
            # Only a running flow's ETA draws on earlier runs.
            running = state.status is FlowStatus.RUNNING
            history = await self._history(state.name, flow_id) if running else None
        weights = state.weights
        report = progress_from_state(state, weights, self._clock(), history)
        if settled(report):
            if len(self._settled) >= _SETTLED_CACHE:
                del self._settled[next(iter(self._settled))]
            self._settled[flow_id] = (state.last_seq, report)
            return copy_progress(report)
        return report

    async def _history(self, name: str, flow_id: str) -> History | None:
        """What earlier successful runs named ``name`` took, re-read at most every
        :data:`_HISTORY_TTL` seconds of the engine's clock (a stale view only misses the
        latest runs)."""
        now = self._clock()
        cached = self._histories.get(name)
        if cached is not None and now - cached[0] < _HISTORY_TTL:
            return cached[1]
        history = await load_history(self.journal, name, exclude=flow_id)
        self._histories[name] = (now, history)
        return history

    async def outcome(self, flow_id: str) -> Outcome:
        """The outcome of flow ``flow_id`` as its journal tells it (no flow object needed):
        its status, the symbols its finished tasks published (and its inputs), every
        atom, the failures, the checkpoint and the open waits with their tokens."""
        async with self._session():
            state = replay(flow_id, await self.journal.load(flow_id))
            signer = (
                await self._external.signer()
                if any(r.state is AtomState.WAITING for r in state.atoms.values())
                else None
            )
        atoms = {
            name: AtomOutcome(r.state, r.result, r.progress, r.attempt, r.failure)
            for name, r in state.atoms.items()
        }
        failures = {n: r.failure for n, r in state.atoms.items() if r.failure is not None}
        if state.cancel is not None:
            failures[CANCEL] = state.cancel
        waiting = tuple(
            Waiting(
                name,
                signer.issue(flow_id, name, r.attempt, str(r.details["nonce"]))
                if wait_kind(r.details) == EXTERNAL
                else "",  # a sleep or a receive: no token ends it
                r.details.get("deadline"),
                dict(r.details.get("info") or {}),
            )
            for name, r in state.atoms.items()
            if r.state is AtomState.WAITING and signer is not None and "nonce" in r.details
        )
        results = dict(state.inputs)
        results.update(published(state))
        summary = await self._summary(flow_id)
        return Outcome(
            flow_id,
            state.status,
            results,
            failures,
            atoms,
            state.checkpoint,
            waiting,
            owner=summary.owner if summary is not None else None,
            orphaned=summary.orphaned if summary is not None else False,
        )

    async def _summary(self, flow_id: str) -> FlowSummary | None:
        """The journal's summary of the flow (None if it has no summary row yet)."""
        async with self._session():
            try:
                return await self.journal.summary(flow_id)
            except NotFoundError:
                return None

    # External work ------------------------------------------------------------------------

    # Cancelling ------------------------------------------------------------------------

    async def cancel(self, flow_id: str) -> None:
        """Stop flow ``flow_id`` wherever it is and revert it: it ends REVERTED, and its
        failures hold :class:`~aioflow.FlowCancelledError` under ``"<cancel>"``.

        The request is stored in the journal first, so it holds whatever happens next.
        A run of the flow in this engine is stopped at once (its running atoms are
        cancelled, as by ``handle.cancel()``) and reverted; a run in another engine is
        stopped by that engine, which looks for requests every second (and at most every
        ``lease / 3``); a resting or orphaned flow is reverted by this engine (in its
        background when entered) if it can build the flow, else by the next ``resume``.
        A flow that is reverting already goes on as it was. Returns once the request is
        stored (without an entered engine, once this engine's part is done); ``await
        engine.wait(flow_id)`` waits for the end.

        Raises :class:`~aioflow.NotFoundError` for an unknown flow and
        :class:`~aioflow.AioflowError` for one that has ended.
        """
        async with self._session():
            summary = await self.journal.summary(flow_id)  # NotFoundError for an unknown flow
            if summary.status.is_final:
                raise AioflowError(
                    f"flow {flow_id} has ended ({summary.status.value}); there is nothing to"
                    " cancel"
                )
            failure = Failure.from_exception(
                FlowCancelledError(f"flow {flow_id} was cancelled (engine.cancel)")
            )
            await self.journal.post_message(
                flow_id, CANCEL, failure.to_dict(), key=CANCEL, time=self._clock()
            )
            _LOG.info("aioflow.cancel_requested", flow_id=flow_id)
            await self._cancel_here(flow_id, summary)

    async def _cancel_here(self, flow_id: str, summary: FlowSummary | None = None) -> None:
        """Act on a stored cancel request of flow ``flow_id`` as far as this engine can."""
        run = self._live.get(flow_id)
        if run is not None:
            found = await self._cancel_request(flow_id)
            if found is not None:
                self._stop(run, found)
            return
        if flow_id in self._slots:
            return  # being taken (the taking applies it) or coming to rest (so does that)
        parked = self._external.resting(flow_id)
        if parked is not None:
            self._external.wake(flow_id, None)  # the waking takes it, and so reverts it
            return
        if summary is None:
            summary = await self.journal.summary(flow_id)
        if summary.status.is_final or summary.status is FlowStatus.REVERTING:
            return
        live_owner = summary.owner not in (None, self.id) and not summary.orphaned
        if live_owner and not summary.status.is_resting:
            return  # its live owner stops it (it looks every second)
        if summary.ref is None:
            # Started from an object this engine does not have: the next resume reverts.
            _LOG.info("aioflow.cancel_left_to_resume", flow_id=flow_id)
            return
        if self._tg is not None:
            self._tg.start_soon(self._cancel_resting, flow_id, name=f"cancel flow {flow_id}")
        else:
            await self._cancel_resting(flow_id)

    def _stop(self, run: Run, failure: Failure) -> None:
        """Stop a run of this engine so that it reverts (see :meth:`_drive`)."""
        if run.failing or run.reverting or run.revert_to is not None or run.stop is None:
            # Reverting already; or moving back to a checkpoint: it comes to rest next,
            # and the look at rest finds the request.
            return
        if run.cancel_failure is None:
            run.cancel_failure = failure
            run.stop.cancel()

    async def _cancel_resting(self, flow_id: str) -> None:
        """Take a resting (or orphaned) flow and revert it, if this engine can build it."""
        if flow_id in self._slots:
            return
        try:
            with self._holding(flow_id) as slot:
                run = await self._take(flow_id)
                if run is None or run.status.is_final:
                    return
                slot.outcome = await self._continue(run, None)
        except FlowFailedError:
            _LOG.info("aioflow.cancelled", flow_id=flow_id)
        except FlowBusyError:
            pass  # taken meanwhile: its new owner applies the request as it takes it
        except Exception as exc:  # the request stays: the next resume applies it
            _LOG.warning("aioflow.cancel_failed", flow_id=flow_id, error=str(exc))
            if self._tg is None:
                raise

    async def complete(self, token: str, result: Any = None) -> None:
        """Finish the external wait ``token`` names with ``result``, once.

        Raises :class:`~aioflow.InvalidTokenError`, changing nothing, for a forged token,
        one signed with another secret, one for an attempt that has ended, one already
        used or one past its deadline. The flow then goes on: at once when it runs in
        this engine; in this entered engine's background when it rests and this engine
        can build it (it ran it, or it was started from a reference or registry name);
        otherwise at the next :meth:`resume`.
        """
        await self._external.close(token, result, None)

    async def send(
        self, flow_id: str, topic: str, message: Any = None, *, idempotency_key: str | None = None
    ) -> None:
        """Put ``message`` in flow ``flow_id``'s journaled mailbox on ``topic``, from any
        process: a :class:`~aioflow.Receive` on that topic takes it, each message once and
        in the order sent; one sent before its receive opens waits for it. A second send
        with the same ``idempotency_key`` (for this flow) is ignored.

        Raises :class:`~aioflow.NotFoundError` for an unknown flow and
        :class:`~aioflow.AioflowError` for one that has ended. A resting flow whose
        receive takes the message wakes in this entered engine when it can build it (as
        with :meth:`complete`); one running in another engine takes it within a second.
        """
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"a topic must be a non-empty string, not {topic!r}")
        if is_reserved(topic):
            raise ValueError(
                f"topic {topic!r} is reserved: aioflow's own topics are written <like-this>"
            )
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key
        ):
            raise ValueError(
                f"an idempotency_key must be a non-empty string or None, not {idempotency_key!r}"
            )
        await self._external.send(flow_id, topic, message, idempotency_key)

    async def fail(self, token: str, error: BaseException | str) -> None:
        """Fail the external wait ``token`` names with ``error`` (an exception, or a
        message for a ``RuntimeError``); the task's retry or the flow's revert follows.
        Refuses tokens as :meth:`complete` does."""
        await self._external.close(token, None, error)


@asynccontextmanager
async def _unwatched(
    watchers: list[MemoryObjectSendStream[Event]], send: MemoryObjectSendStream[Event]
) -> AsyncIterator[None]:
    """Take a watch's stream out of its flow's watchers when the watch ends, however."""
    try:
        yield
    finally:
        if send in watchers:
            watchers.remove(send)
