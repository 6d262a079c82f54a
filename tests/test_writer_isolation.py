"""The group-commit writer never stops for everyone: a refused flow, or a failed commit,
drops only the rows of the flows concerned, and the writer goes on with the rest."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import pytest

from aioflow import JournalError, LeaseLostError
from aioflow.journal._writer import CommitError, GroupWriter

Row = tuple[str, int]


class Store:
    """Commits rows to a list; refuses flows, or fails whole commits, when told to."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.refuse: dict[str, BaseException] = {}
        self.fail_next = 0
        self.keep_first = 0

    async def commit(self, batch: list[Row]) -> Mapping[str, BaseException] | None:
        await anyio.lowlevel.checkpoint()
        if self.fail_next:
            self.fail_next -= 1
            self.rows.extend(batch[: self.keep_first])
            raise CommitError("the disk is full", committed=self.keep_first)
        refused = {row[0]: self.refuse[row[0]] for row in batch if row[0] in self.refuse}
        self.rows.extend(row for row in batch if row[0] not in refused)
        return refused or None


async def test_a_refused_flow_is_dropped_and_the_others_are_committed() -> None:
    store = Store()
    told: list[Mapping[str, BaseException]] = []
    writer: GroupWriter[Row] = GroupWriter(
        store.commit, name="test", key=lambda row: row[0], on_refused=told.append
    )
    lost = LeaseLostError("f was taken over")
    store.refuse["f"] = lost
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        tickets = [writer.append(row) for row in [("f", 1), ("g", 1), ("f", 2), ("g", 2)]]
        with pytest.raises(LeaseLostError):
            await writer.wait_durable(tickets[2])
        await writer.wait_durable(tickets[3])
        assert writer.broken["f"] is lost  # the journal refuses its later appends with it
        writer.append(("g", 3))
        await writer.close()
    assert store.rows == [("g", 1), ("g", 2), ("g", 3)]
    assert told == [{"f": lost}]
    assert writer.error is None


async def test_a_failed_commit_fails_its_flows_then_the_writer_goes_on() -> None:
    store = Store()
    store.fail_next = 1
    store.keep_first = 1  # a first transaction of the batch made it
    writer: GroupWriter[Row] = GroupWriter(store.commit, name="test", key=lambda row: row[0])
    async with anyio.create_task_group() as tg:
        await tg.start(writer.run)
        first = [writer.append(row) for row in [("a", 1), ("b", 1), ("c", 1)]]
        with pytest.raises(JournalError, match="disk is full"):
            await writer.wait_durable(first[1])
        assert not writer.healthy and writer.failures == 1
        await writer.wait_durable(first[0])  # flow a's row was kept
        later = writer.append(("a", 2))
        await writer.wait_durable(later)
        assert writer.healthy
        await writer.close()
    assert store.rows == [("a", 1), ("a", 2)]
    assert set(writer.broken) == {"b", "c"}
