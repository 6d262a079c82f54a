"""The journals' mailbox: post_message, next_message, mail_topics and mail_since on the
memory, SQLite and PostgreSQL journals, with several senders sharing one store."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import pytest

import aioflow
from aioflow._errors import JournalError, NotFoundError, SerializationError
from aioflow.journal import Journal, MemoryJournal, SqliteJournal, open_journal, postgres
from aioflow.journal.postgres import PostgresJournal, dsn_from_url

from .pg import pg_schema, pg_url, run_sync
from .test_checkpoints import three_stages
from .test_journal import flow_start

__all__ = ["pg_schema", "pg_url"]

PROJECT = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0
NOBODY = 65534


@dataclass
class Store:
    """One backend's storage, and how to make another journal object on it."""

    kind: str
    url: str
    make: Callable[[], Journal]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        memory = MemoryJournal()  # one object: a memory journal is not shared
        return Store("memory", "memory://", lambda: memory)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mail.db'}"
        return Store("sqlite", url, lambda: SqliteJournal(url))
    url = str(request.getfixturevalue("pg_url"))
    return Store("postgres", url, lambda: PostgresJournal(url))


@pytest.fixture(params=["sqlite", "postgres"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A store that several journal objects (and processes) share."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'mail.db'}"
        return Store("sqlite", url, lambda: SqliteJournal(url))
    url = str(request.getfixturevalue("pg_url"))
    return Store("postgres", url, lambda: PostgresJournal(url))


@contextlib.asynccontextmanager
async def opened(
    store: Store, n: int = 1, *, flows: tuple[str, ...] = ("f",)
) -> AsyncIterator[list[Journal]]:
    """``n`` open journal objects on ``store`` (the same one, for memory), holding
    ``flows``. Opened here rather than in a fixture: a journal's task group must be
    entered and left by one task."""
    async with contextlib.AsyncExitStack() as stack:
        journals: list[Journal] = []
        for _ in range(n):
            journal = store.make()
            if not journal.is_open:
                await stack.enter_async_context(journal)
            journals.append(journal)
        for flow_id in flows:
            journals[0].append(flow_start(flow_id))
        await journals[0].flush()
        yield journals


async def drain(journal: Journal, flow_id: str, topic: str) -> list[tuple[int, object]]:
    """Every message of ``flow_id`` on ``topic``, taken one by one as a receive does."""
    taken: list[tuple[int, object]] = []
    after = 0
    while (found := await journal.next_message(flow_id, topic, after)) is not None:
        taken.append(found)
        after = found[0]
    return taken


async def post(journal: Journal, flow_id: str, topic: str, message: object) -> int:
    """Post a message that must be stored, and return its id."""
    stored = await journal.post_message(flow_id, topic, message, time=1.0)
    assert stored is not None
    return stored


# ------------------------------------------------------------------------ one journal


async def test_messages_come_back_by_id_in_the_order_posted(store: Store) -> None:
    async with opened(store) as (journal,):
        sent = ["one", {"two": [2, 2.5]}, [3, None, True]]
        ids = [await post(journal, "f", "t", m) for m in sent]

        assert ids == sorted(ids) and len(set(ids)) == 3
        assert await drain(journal, "f", "t") == list(zip(ids, sent, strict=True))
        assert await journal.next_message("f", "t") == (ids[0], "one")
        assert await journal.next_message("f", "t", after=ids[0]) == (ids[1], sent[1])
        assert await journal.next_message("f", "t", after=ids[-1]) is None
        newest, found = await journal.mail_since(None)
        assert (newest, found) == (ids[-1], [])
        assert await journal.mail_since(0) == (ids[-1], [("f", "t")] * 3)
        assert await journal.mail_since(ids[0]) == (ids[-1], [("f", "t")] * 2)


async def test_topics_and_flows_each_have_their_own_messages(store: Store) -> None:
    async with opened(store, flows=("f", "g")) as (journal,):
        a1 = await post(journal, "f", "alpha", "a1")
        b1 = await post(journal, "f", "beta", "b1")
        g1 = await post(journal, "g", "alpha", "g1")
        a2 = await post(journal, "f", "alpha", "a2")

        assert await drain(journal, "f", "alpha") == [(a1, "a1"), (a2, "a2")]
        assert await drain(journal, "f", "beta") == [(b1, "b1")]
        assert await drain(journal, "g", "alpha") == [(g1, "g1")]
        assert await drain(journal, "g", "beta") == []
        assert await journal.next_message("f", "gamma") is None

        assert await journal.mail_topics("f", {}) == {"alpha", "beta"}
        assert await journal.mail_topics("f", {"alpha": a1}) == {"alpha", "beta"}
        assert await journal.mail_topics("f", {"alpha": a2}) == {"beta"}
        assert await journal.mail_topics("f", {"alpha": a2, "beta": b1}) == set()
        assert await journal.mail_topics("g", {"alpha": g1}) == set()
        assert await journal.mail_topics("nobody", {}) == set()


async def test_a_key_stores_a_message_once_per_flow(store: Store) -> None:
    async with opened(store, flows=("f", "g")) as (journal,):
        first = await journal.post_message("f", "t", "first", key="k", time=1.0)
        again = await journal.post_message("f", "t", "first, again", key="k", time=2.0)
        other_topic = await journal.post_message("f", "u", "on u", key="k", time=2.0)
        other_flow = await journal.post_message("g", "t", "for g", key="k", time=2.0)
        second = await journal.post_message("f", "t", "second", key="k2", time=3.0)
        keyless = [await journal.post_message("f", "t", "same", time=4.0) for _ in range(2)]

        assert first is not None and second is not None
        assert again is None and other_topic is None  # a key is the flow's, not a topic's
        assert other_flow is not None
        assert None not in keyless
        assert [m for _, m in await drain(journal, "f", "t")] == [
            "first",
            "second",
            "same",
            "same",
        ]
        assert await drain(journal, "f", "u") == []


async def test_a_post_to_an_unknown_flow_is_refused_and_stores_nothing(store: Store) -> None:
    async with opened(store) as (journal,):
        with pytest.raises(NotFoundError, match="no flow nope"):
            await journal.post_message("nope", "t", "hello", time=1.0)
        with pytest.raises(NotFoundError):
            await journal.post_message("nope", "t", "hello", key="k", time=1.0)
        assert await journal.next_message("nope", "t") is None
        assert (await journal.mail_since(0))[1] == []


async def test_a_message_the_codec_refuses_raises_and_stores_nothing(store: Store) -> None:
    async with opened(store) as (journal,):
        with pytest.raises(SerializationError, match="topic 't' for flow f") as caught:
            await journal.post_message("f", "t", {"x": object()}, key="k", time=1.0)
        assert caught.value.atom is None
        assert await journal.next_message("f", "t") is None
        # Nothing of it was kept, not even its key.
        stored = await journal.post_message("f", "t", "fine", key="k", time=1.0)
        assert stored is not None
        assert await drain(journal, "f", "t") == [(stored, "fine")]


async def test_a_large_message_is_kept_whole(store: Store) -> None:
    big = {"blob": "x" * 3_000_000, "items": list(range(20_000))}  # encoded in a thread
    async with opened(store) as (journal,):
        stored = await journal.post_message("f", "t", big, time=1.0)
        assert await journal.next_message("f", "t") == (stored, big)


async def test_a_flow_still_being_committed_is_found(store: Store) -> None:
    async with opened(store, flows=()) as (journal,):
        journal.append(flow_start("new"))  # not awaited: it may not be committed yet
        stored = await journal.post_message("new", "t", "hi", time=1.0)
        assert await journal.next_message("new", "t") == (stored, "hi")


async def test_compaction_leaves_the_mailbox_alone(store: Store) -> None:
    engine = aioflow.Engine(store.make())
    await engine.run(three_stages(), flow_id="f", stop_at="two")
    async with open_journal(engine.journal) as journal:
        ids = [await journal.post_message("f", "t", n, time=1.0) for n in range(3)]
        assert await journal.compact("f", keep=1) > 0
        # Compaction cannot know which messages are still to be taken: it keeps them all.
        assert await drain(journal, "f", "t") == [(i, n) for n, i in enumerate(ids)]


async def test_messages_outlive_the_journal_object_and_read_without_opening(
    shared: Store,
) -> None:
    async with opened(shared) as (journal,):
        stored = await journal.post_message("f", "t", "kept", time=1.0)
    reader = shared.make()  # never opened: reads as flows() does
    assert await reader.next_message("f", "t") == (stored, "kept")
    assert await reader.mail_topics("f", {}) == {"t"}
    assert await reader.mail_since(None) == (stored, [])
    with pytest.raises(JournalError, match="not open"):
        await reader.post_message("f", "t", "no", time=1.0)


# ------------------------------------------------------------- several senders at once


async def test_one_key_posted_at_once_through_two_journals_is_kept_once(shared: Store) -> None:
    async def post(journal: Journal, key: str, results: list[int | None]) -> None:
        results.append(await journal.post_message("f", "t", key, key=key, time=1.0))

    async with opened(shared, 2) as journals:
        for round_ in range(10):
            results: list[int | None] = []
            async with anyio.create_task_group() as tg:
                for journal in journals:
                    tg.start_soon(post, journal, f"k{round_}", results)
            assert sorted(results, key=lambda r: r is None)[1:] == [None], results
        taken = [m for _, m in await drain(journals[1], "f", "t")]
        assert taken == [f"k{i}" for i in range(10)]


async def test_concurrent_senders_are_all_kept_in_order_and_a_reader_skips_none(
    store: Store,
) -> None:
    senders, each = 4, 50
    async with opened(store, senders + 1) as journals:
        posted: dict[str, list[int]] = {}
        taken: list[tuple[int, object]] = []
        done = anyio.Event()

        async def send(journal: Journal, name: str) -> None:
            mine = posted.setdefault(name, [])
            for i in range(each):
                stored = await journal.post_message("f", "t", f"{name}-{i}", time=1.0)
                assert stored is not None
                mine.append(stored)

        async def read(journal: Journal) -> None:
            # Follows the ids as they come, as a receive does: it would miss for good a
            # message committed after one with a higher id.
            after = 0
            while True:
                finished = done.is_set()
                found = await journal.next_message("f", "t", after)
                if found is not None:
                    taken.append(found)
                    after = found[0]
                elif finished:
                    return
                else:
                    await anyio.sleep(0.001)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as reading:
                reading.start_soon(read, journals[-1])
                async with anyio.create_task_group() as tg:
                    for s, journal in enumerate(journals[:senders]):
                        tg.start_soon(send, journal, f"s{s}")
                done.set()

    every = sorted(i for ids in posted.values() for i in ids)
    assert len(every) == len(set(every)) == senders * each
    assert [i for i, _ in taken] == every  # nothing skipped, in id order
    for name, ids in posted.items():
        assert ids == sorted(ids)  # each sender's messages in the order it sent them
        mine = [m for _, m in taken if str(m).startswith(f"{name}-")]
        assert mine == [f"{name}-{i}" for i in range(each)]


SENDER = textwrap.dedent(
    """
    import sys, anyio
    from aioflow.journal import open_journal

    async def main(url, name, count):
        async with open_journal(url) as journal:
            for i in range(count):
                key = f"{name}-{i}"
                first = await journal.post_message("f", "t", key, key=key, time=0.0)
                again = await journal.post_message("f", "t", key, key=key, time=0.0)
                assert first is not None and again is None, (first, again)

    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def send_from_a_process(url: str, name: str, count: int) -> None:
    command = [sys.executable, "-c", SENDER, url, name, str(count)]
    await anyio.run_process(command, env={**os.environ, "PYTHONPATH": str(PROJECT)})


async def test_senders_in_several_processes_are_all_kept_once_in_order(shared: Store) -> None:
    senders, each = 4, 50
    async with opened(shared) as (journal,):
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for s in range(senders):
                    tg.start_soon(send_from_a_process, shared.url, f"s{s}", each)
        taken = await drain(journal, "f", "t")
    assert len(taken) == senders * each
    assert len({i for i, _ in taken}) == len(taken)
    for s in range(senders):
        mine = [m for _, m in taken if str(m).startswith(f"s{s}-")]
        assert mine == [f"s{s}-{i}" for i in range(each)]


# ---------------------------------------------------------------------------- SQLite


async def test_reading_a_sqlite_journal_that_never_had_mail_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    async with SqliteJournal(path) as journal:
        journal.append(flow_start("f"))
        await journal.flush()
        # Opening made no mailbox: a file is changed only once something is sent to it.
        assert await journal.next_message("f", "t") is None
    before = path.read_bytes()
    reader = SqliteJournal(path)
    assert await reader.next_message("f", "t") is None
    assert await reader.mail_topics("f", {}) == set()
    assert await reader.mail_since(None) == (0, [])
    assert await reader.mail_since(5) == (5, [])
    assert path.read_bytes() == before
    db = sqlite3.connect(path)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    finally:
        db.close()
    assert "aioflow_mailbox" not in tables


READ_ONLY_READER = textwrap.dedent(
    """
    import json, os, sys, anyio
    from pathlib import Path
    import aioflow, aioflow.journal.sqlite, anyio._backends._asyncio
    from aioflow.journal import SqliteJournal

    if len(sys.argv) > 2:  # become that user, once what is needed is imported
        uid = int(sys.argv[2])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    async def main() -> None:
        found = {}
        for name in ("mail", "old"):
            path = Path(sys.argv[1], name + ".db")
            found[name] = await SqliteJournal(path).next_message("f", "t")
        try:
            await SqliteJournal(Path(sys.argv[1], "mail.db")).open()
        except aioflow.JournalError as exc:
            found["open"] = str(exc)
        print(json.dumps(found))

    anyio.run(main)
    """
)


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder another user can reach: tmp_path's parents are closed to others."""
    path = Path(tempfile.mkdtemp(prefix="aioflow-mail-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.chmod(0o755)
        shutil.rmtree(path)


async def test_a_read_only_sqlite_journal_reads_its_mail(folder: Path) -> None:
    for name in ("mail", "old"):
        async with SqliteJournal(folder / f"{name}.db") as journal:
            journal.append(flow_start("f"))
            await journal.flush()
            if name == "mail":
                stored = await journal.post_message("f", "t", "hello", time=1.0)
    for name in ("mail", "old"):
        (folder / f"{name}.db").chmod(0o444)
    if ROOT:  # permission bits do not stop root: the reader runs as nobody
        os.chown(folder, NOBODY, NOBODY)
    done = subprocess.run(
        [sys.executable, "-c", READ_ONLY_READER, str(folder), *([str(NOBODY)] * ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["mail"] == [stored, "hello"]
    assert found["old"] is None  # no mailbox table, and none could be made: no mail
    assert "is read-only" in found["open"]


# ------------------------------------------------------------------------ PostgreSQL


async def sql(url: str, statement: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn_from_url(url))
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


async def test_opening_a_postgres_journal_waits_for_no_post_in_flight(pg_url: str) -> None:
    async with opened(Store("postgres", pg_url, lambda: PostgresJournal(pg_url))):
        pass
    conn = await asyncpg.connect(dsn_from_url(pg_url))
    try:
        async with conn.transaction():  # a send holding its row lock, unfinished
            await conn.execute(
                "INSERT INTO aioflow_mailbox(flow_id, topic, message, sent) VALUES ('f', 't',"
                " '1', 0)"
            )
            with anyio.fail_after(5):
                async with PostgresJournal(pg_url) as journal:
                    assert await journal.next_message("f", "t") is None
    finally:
        await conn.close()


def as_role(url: str, role: str, password: str) -> str:
    """``url`` with another user and password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{role}:{password}@{rest.rpartition('@')[2]}"


async def test_a_postgres_post_commits_after_every_post_with_a_lower_id(pg_url: str) -> None:
    store = Store("postgres", pg_url, lambda: PostgresJournal(pg_url))
    async with opened(store) as (journal,):
        later: list[int | None] = []

        async def post_second() -> None:
            later.append(await journal.post_message("f", "t", "second", time=2.0))

        conn = await asyncpg.connect(dsn_from_url(pg_url))
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    # A post caught between drawing its id and committing.
                    first_post = conn.transaction()
                    await first_post.start()
                    text = journal.codec.encode("first")
                    _, first = await conn.fetchrow(postgres._POST, "f", "t", None, text, 1.0)
                    tg.start_soon(post_second)
                    await anyio.sleep(0.3)
                    # Had the second committed, a reader would take it and skip the first.
                    assert await journal.next_message("f", "t") is None
                    await first_post.commit()
        finally:
            await conn.close()
        assert later[0] is not None and later[0] > first
        assert await drain(journal, "f", "t") == [(first, "first"), (later[0], "second")]


@pytest.fixture
def dml_role(pg_schema: str, pg_url: str) -> Iterator[str]:
    """A role that may read and write the tables of ``pg_schema``, and create none."""
    role = "aioflow_dml_" + uuid.uuid4().hex[:12]
    run_sync(sql(pg_url, f"CREATE ROLE {role} LOGIN PASSWORD 'dml'"))
    try:
        run_sync(sql(pg_url, f"GRANT USAGE ON SCHEMA {pg_schema} TO {role}"))
        yield role
    finally:
        run_sync(sql(pg_url, f"DROP OWNED BY {role}"))
        run_sync(sql(pg_url, f"DROP ROLE {role}"))


async def test_a_role_that_may_not_create_tables_opens_a_journal_without_mailbox(
    pg_schema: str, pg_url: str, dml_role: str
) -> None:
    async with PostgresJournal(pg_url) as journal:
        journal.append(flow_start("f"))
        await journal.flush()
    await sql(pg_url, "DROP TABLE aioflow_mailbox")  # as a journal made before the mailbox
    for what in ("TABLES", "SEQUENCES"):
        await sql(pg_url, f"GRANT ALL ON ALL {what} IN SCHEMA {pg_schema} TO {dml_role}")
    url = as_role(pg_url, dml_role, "dml")
    try:
        await sql(url, "SELECT 1")
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"cannot log in as a new role on this server: {exc}")

    async with PostgresJournal(url) as journal:
        assert [s.flow_id for s in await journal.flows()] == ["f"]
        assert await journal.next_message("f", "t") is None
        assert await journal.mail_topics("f", {}) == set()
        with pytest.raises(JournalError, match="has no mailbox"):
            await journal.post_message("f", "t", "hello", time=1.0)
    # Once a role that may has opened it, the mailbox is there for everyone.
    async with PostgresJournal(pg_url):
        pass
    for what in ("TABLES", "SEQUENCES"):
        await sql(pg_url, f"GRANT ALL ON ALL {what} IN SCHEMA {pg_schema} TO {dml_role}")
    async with PostgresJournal(url) as journal:
        stored = await journal.post_message("f", "t", "hello", time=1.0)
        assert await journal.next_message("f", "t") == (stored, "hello")
