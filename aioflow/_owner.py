"""An engine's ownership of the flows it runs: one heartbeat, and the flows it gave up.

Every run of a flow has one owner, the engine running it, recorded in the journal with
a generation that grows at each taking (see :meth:`aioflow.journal.Journal.take`). The
journal refuses, inside each commit, the events of a run whose generation is no longer
the flow's (fencing), so an owner that lost its flow cannot write one more event of it.
Whether an owner is alive is one heartbeat per engine, renewed every ``lease / 3``; a
RUNNING flow whose owner's heartbeat ran out is orphaned, and may be taken over.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from ._errors import AioflowError
from ._log import get_logger
from .journal import Journal

__all__ = ["Ownership", "new_engine_id"]

_LOG = get_logger("aioflow")


def new_engine_id() -> str:
    """An id unique to one engine object: ``host:pid:random``."""
    import socket  # here: socket costs milliseconds at import, and only engines need it

    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class Ownership:
    """The heartbeat of one engine and the flows it must still give up.

    :meth:`ensure` makes sure the heartbeat covers the coming work before a flow is
    taken; :meth:`run` renews it every ``lease / 3`` and, each time, tries again to give
    up the flows whose runs ended without their last events (the store failed): until
    given up they would look owned by a live engine and no one could recover them.
    """

    def __init__(
        self,
        journal: Journal,
        owner: str,
        lease: float,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.journal = journal
        self.owner = owner
        self.lease = lease
        self.clock = clock
        self.sleep = sleep
        self.expires = 0.0
        """When the heartbeat last written runs out (the journal's clock)."""
        self.giving_up: dict[str, int] = {}
        """Flow id -> generation of the flows to give up once the journal is back."""

    async def ensure(self) -> None:
        """Renew the heartbeat unless it still has two thirds of a lease to run: with the
        journal's next commit (or taking) when it can, which costs no round trip of its
        own, else now."""
        now = self.clock()
        if self.expires - now < self.lease * 2 / 3:
            expires = now + self.lease
            if self.journal.beat_on_commit(self.owner, expires):
                self.expires = expires
            else:
                await self.renew()

    async def renew(self) -> None:
        expires = self.clock() + self.lease
        await self.journal.heartbeat(self.owner, expires)
        self.expires = expires

    def give_up(self, flow_id: str, generation: int) -> None:
        """Give up ``flow_id`` as soon as the journal takes the write (see :meth:`run`)."""
        self.giving_up[flow_id] = generation

    async def disown_pending(self) -> None:
        for flow_id, generation in list(self.giving_up.items()):
            await self.journal.disown(flow_id, self.owner, generation)
            if self.giving_up.get(flow_id) == generation:
                del self.giving_up[flow_id]
            _LOG.info("aioflow.flow_given_up", flow_id=flow_id, owner=self.owner)

    async def run(
        self,
        busy: Callable[[], bool],
        every_lease: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Until cancelled: every ``lease / 3``, renew the heartbeat while ``busy()`` says
        flows run here, and give up what is pending; first and then once a lease, call
        ``every_lease`` (recovery)."""
        ticks = 0
        while True:
            if every_lease is not None and ticks % 3 == 0:
                try:
                    await every_lease()
                except Exception as exc:  # recovery tries again next lease, whatever broke
                    _LOG.warning("aioflow.recovery_failed", owner=self.owner, error=str(exc))
            await self.sleep(self.lease / 3)
            ticks += 1
            try:
                if busy():
                    await self.renew()
                await self.disown_pending()
            except (AioflowError, OSError) as exc:
                # The store is away; fencing keeps the flows safe meanwhile. Try again.
                _LOG.warning("aioflow.heartbeat_failed", owner=self.owner, error=str(exc))


def check_lease(lease: object) -> float:
    """``lease`` as seconds, or ValueError naming it."""
    if (
        isinstance(lease, bool)
        or not isinstance(lease, int | float)
        or not lease > 0
        or lease == float("inf")
    ):
        raise ValueError(f"lease must be a positive, finite number of seconds, not {lease!r}")
    return float(lease)
