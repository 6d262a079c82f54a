"""The worker strategy: how a run's atoms get asyncio tasks.

On asyncio, atoms run in *workers*: plain asyncio tasks that take ready atoms one after
another and run each in place until it first waits for something. An atom that finishes
without waiting (a no-op, a cached answer) costs no task at all; one that waits keeps its
worker, and the worker starts up to two more for what is still ready, so a thousand
sleeping atoms get their thousand tasks within a few turns of the loop. The workers live
in the run's task group through one guard task (:meth:`Workers.guard_atoms`), which
cancels them when the group is cancelled and raises what escaped them. In ``strict``
durability a worker also releases the atoms whose results wait for their commit, so a
fan-out of 10k atoms does not become 10k waiting tasks. (On trio each atom gets a task of
the group instead: :meth:`aioflow._kernel.run.Run.run_atom`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections import deque
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._scope import ScopeMembership
from .._states import Atoms

if TYPE_CHECKING:
    from .run import Run

__all__ = ["Workers"]

_YIELD_EVERY = 64
_S = Atoms
_IN_GROUP: contextlib.nullcontext[None] = contextlib.nullcontext()


@types.coroutine
def _go_on(step: Coroutine[Any, Any, Any], awaited: Any) -> Generator[Any, Any, None]:
    """Drive ``step``, a coroutine that was started by hand and is waiting on ``awaited``,
    to its end from the task that awaits this: it stays in the task it began in, so its
    cancel scopes and its context stay valid."""
    while True:
        try:
            sent = yield awaited
        except GeneratorExit:
            step.close()
            raise
        except BaseException as exc:  # cancellation included: the step handles it
            try:
                awaited = step.throw(exc)
            except StopIteration:
                return
        else:
            try:
                awaited = step.send(sent)
            except StopIteration:
                return


class Workers:
    """The asyncio workers of one run (``run.workers``)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.atom_tasks: dict[asyncio.Task[None], None] = {}
        self.unstarted: set[asyncio.Task[None]] = set()
        self.deferred: deque[tuple[int, int]] = deque()  # (ticket, atom) to release
        self.deferred_at: dict[int, int] = {}  # atom -> the ticket it waits for
        self.releasing = False
        self.worker_name = f"atoms of {run.flow_id}"
        self.worker_done = self.atom_done  # one bound method for every worker
        self.atom_scopes: dict[anyio.CancelScope, None] = {}
        # Workers join the task group's cancel scope (see _scope.py); None: each enters
        # a scope of its own (scope_class) instead.
        self.members: ScopeMembership | None = None
        # The backend's own class of anyio.CancelScope: anyio.CancelScope() looks the
        # running backend up on every call (~2 us), the class is the same every time.
        self.scope_class: type[anyio.CancelScope] = anyio.CancelScope
        self.atom_error: BaseException | None = None
        self.atoms_idle: anyio.Event | None = None
        self.guarding = False

    def add_workers(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        tasks, members = self.atom_tasks, self.members
        for _ in range(n):
            task = loop.create_task(self.work(), name=self.worker_name)
            if members is not None:
                members.join(task)
            tasks[task] = None
            self.unstarted.add(task)
            task.add_done_callback(self.worker_done)
        if not self.guarding:
            self.guarding = True
            assert self.run.tg is not None
            self.run.tg.start_soon(self.guard_atoms, name=self.worker_name)

    async def work(self) -> None:
        """A worker: run ready atoms one after another, each in place until it first
        waits (then it keeps this worker, and up to two more workers take what is still
        ready), and release what waits for a commit (see :meth:`defer_release`), until
        none is left (see :meth:`spawn`)."""
        self.unstarted.discard(asyncio.current_task())
        ready = self.run.startable
        steps = 0
        # A member of the task group's scope needs no scope of its own (see _scope.py).
        with _IN_GROUP if self.members is not None else self.scope_class() as scope:
            if scope is not None:
                self.atom_scopes[scope] = None
            try:
                while True:
                    while ready:
                        steps += 1
                        if steps % _YIELD_EVERY == 0:
                            await anyio.lowlevel.checkpoint()  # let others run meanwhile
                            continue
                        i = ready.popleft()
                        step = self.run.execute(i)
                        try:
                            try:
                                awaited = step.send(None)
                            except StopIteration:
                                continue  # done without waiting
                            spare = len(ready) - len(self.unstarted)
                            if spare <= 0 and self.deferred and not self.releasing:
                                # Releases this worker deferred must not wait for this
                                # atom: one more worker waits for their commit instead.
                                spare = 1 - len(self.unstarted)
                            if spare > 0:
                                assert self.run.loop is not None
                                self.add_workers(self.run.loop, min(spare, 2))
                            await _go_on(step, awaited)
                        except anyio.get_cancelled_exc_class():
                            self.run.cancelled = True
                            raise
                        finally:
                            self.run.atom_ended(i)
                    if not self.deferred or self.releasing:
                        return
                    await self.release_durable()
            finally:
                if scope is not None:
                    del self.atom_scopes[scope]

    def defer_release(self, i: int, ticket: int) -> None:
        """Release ``i``'s successors once ``ticket`` is committed (strict durability),
        without holding up the worker: atoms finishing together share one wait, and a
        fan-out of 10k atoms does not become 10k waiting tasks. Until then the atom
        counts as running."""
        self.run.running += 1
        self.deferred.append((ticket, i))
        self.deferred_at[i] = ticket

    async def release_durable(self) -> None:
        """Release the deferred atoms whose results are committed (one worker at a time),
        until none is left or some atom became ready."""
        self.releasing = True
        try:
            deferred = self.deferred
            while deferred and not self.run.startable:
                await self.run.journal.wait_durable(deferred[0][0])
                durable = self.run.journal.durable
                while deferred and deferred[0][0] <= durable:
                    ticket, i = deferred.popleft()
                    self.run.running -= 1
                    # A part retried meanwhile ran the atom again: that run releases.
                    if self.deferred_at.get(i) == ticket:
                        del self.deferred_at[i]
                        if not self.run.failing and self.run.states[i] is _S.SUCCESS:
                            self.run.release(i)
                self.run.reverter.check_idle()
        finally:
            self.releasing = False

    def atom_done(self, task: asyncio.Task[None]) -> None:
        if self.members is not None:
            self.members.leave(task)
        del self.atom_tasks[task]
        self.unstarted.discard(task)
        if not task.cancelled() and self.atom_error is None:
            self.atom_error = task.exception()
        if (not self.atom_tasks or self.atom_error is not None) and self.atoms_idle is not None:
            self.atoms_idle.set()

    async def guard_atoms(self) -> None:
        """Stay in the run's task group while workers run (see :meth:`spawn`)."""
        try:
            try:
                while self.atom_tasks and self.atom_error is None:
                    self.atoms_idle = anyio.Event()
                    await self.atoms_idle.wait()
            except anyio.get_cancelled_exc_class():
                await self.stop_atoms()
                raise
            if self.atom_error is not None:
                await self.stop_atoms()
                raise self.atom_error
        finally:
            self.guarding = False

    async def stop_atoms(self) -> None:
        """Cancel the atom tasks and wait, shielded, until they have all ended."""
        if self.members is not None:
            assert self.run.tg is not None
            self.run.tg.cancel_scope.cancel()  # the workers' scope; the run ends either way
        for scope in list(self.atom_scopes):
            scope.cancel()
        with anyio.CancelScope(shield=True):
            while self.atom_tasks:
                self.atoms_idle = anyio.Event()
                await self.atoms_idle.wait()
