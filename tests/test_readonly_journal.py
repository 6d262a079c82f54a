"""A SQLite journal that may not be written says that it is read-only, and names the path.

Permission bits do not stop root, so as root the engine runs in a child process that
becomes ``nobody`` first; a read-only file system (a tmpfs mounted read-only) stops
everyone.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioflow
from aioflow.journal import SqliteJournal, open_journal

ROOT = os.geteuid() == 0
NOBODY = 65534
REPO = Path(__file__).resolve().parent.parent

RUN_ONE_FLOW = textwrap.dedent(
    """
    import asyncio, os, sys
    import aioflow, aioflow.journal.sqlite, anyio._backends._asyncio

    if len(sys.argv) > 2:  # become that user, once what is needed is imported
        uid = int(sys.argv[2])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    @aioflow.task
    async def one() -> int:
        return 1

    async def main() -> None:
        try:
            async with aioflow.Engine(sys.argv[1]) as engine:
                await engine.run(aioflow.Linear("f", one))
        except aioflow.JournalError as exc:
            print(f"JournalError: {exc}")
        else:
            print("ran")

    asyncio.run(main())
    """
)


@aioflow.task
async def one() -> int:
    return 1


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder the child process can reach: tmp_path's parents are closed to others."""
    path = Path(tempfile.mkdtemp(prefix="aioflow-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        path.chmod(0o755)
        shutil.rmtree(path)


def owned_by_the_runner(path: Path) -> None:
    """Make ``path`` belong to whoever runs the flow (nobody, when the tests run as root)."""
    if ROOT:
        os.chown(path, NOBODY, NOBODY)


def run_a_flow(url: str) -> str:
    """Run a one-atom flow on ``url`` in a child process (as nobody when root): "ran",
    or the JournalError it met."""
    # The child drops root itself rather than being started as nobody: the interpreter
    # may live where nobody cannot reach it (a pyenv under /root).
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE_FLOW, url, *([str(NOBODY)] if ROOT else [])],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


async def make_journal(path: Path) -> None:
    async with aioflow.Engine(f"sqlite:///{path}") as engine:
        await engine.run(aioflow.Linear("f", one))


def assert_read_only(message: str, path: Path) -> None:
    assert message.startswith("JournalError: journal sqlite:///"), message
    assert "is read-only" in message
    assert str(path) in message
    assert "fix the permissions" in message and "another path" in message
    assert "not a SQLite database" not in message


async def test_a_journal_file_that_may_not_be_written_is_refused_as_read_only(
    folder: Path,
) -> None:
    path = folder / "journal.db"
    await make_journal(path)
    owned_by_the_runner(folder)
    path.chmod(0o444)
    before = path.read_bytes()
    message = run_a_flow(f"sqlite:///{path}")
    assert_read_only(message, path)
    assert f"the file {path} is read-only" in message
    assert path.read_bytes() == before
    # Reading needs no writing: the flows are listed as ever.
    assert [s.name for s in await open_journal(f"sqlite:///{path}").flows()] == ["f"]


async def test_a_journal_in_a_folder_that_may_not_be_written_is_refused_as_read_only(
    folder: Path,
) -> None:
    path = folder / "journal.db"
    await make_journal(path)
    owned_by_the_runner(path)
    folder.chmod(0o555)
    message = run_a_flow(f"sqlite:///{path}")
    assert_read_only(message, folder)
    assert f"its folder {folder} is read-only" in message


async def test_a_new_journal_in_a_read_only_folder_is_refused_as_read_only(
    folder: Path,
) -> None:
    folder.chmod(0o555)
    message = run_a_flow(f"sqlite:///{folder}/new.db")
    assert_read_only(message, folder)
    assert not (folder / "new.db").exists()


@pytest.fixture
def read_only_mount(folder: Path) -> Iterator[Path]:
    """A tmpfs holding a journal, mounted read-only (root only)."""
    if not ROOT:
        pytest.skip("mounting a read-only file system needs root")
    mount = folder / "mnt"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "tmpfs", str(mount)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


async def test_a_journal_on_a_read_only_file_system_says_so(read_only_mount: Path) -> None:
    path = read_only_mount / "journal.db"
    await make_journal(path)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    with pytest.raises(aioflow.JournalError) as info:
        async with aioflow.Engine(f"sqlite:///{path}") as engine:
            await engine.run(aioflow.Linear("f", one))
    assert_read_only(f"JournalError: {info.value}", path)
    # SQLite cannot even read it there (WAL wants its -shm file): that says read-only too,
    # not "not a SQLite database".
    with pytest.raises(aioflow.JournalError) as info:
        await open_journal(f"sqlite:///{path}").flows()
    assert_read_only(f"JournalError: {info.value}", path)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(aioflow.JournalError, match="is read-only: its folder"):
        await SqliteJournal(read_only_mount / "new.db").open()


async def test_sqlite_refusing_a_write_is_reported_as_read_only(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    await make_journal(path)
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        with pytest.raises(sqlite3.OperationalError) as refused:
            db.execute("CREATE TABLE t(x)")
    finally:
        db.close()
    assert refused.value.sqlite_errorcode == sqlite3.SQLITE_READONLY
    error = await SqliteJournal(path)._open_error(refused.value)
    assert_read_only(f"JournalError: {error}", path)
    assert "attempt to write a readonly database" in str(error)


async def test_a_version_2_journal_that_may_not_be_written_says_it_needs_migrating(
    read_only_mount: Path,
) -> None:
    """Reading a version 2 journal needs its move to version 4 first; on a file that may
    not be written that fails, with an error that says so, and the file is untouched."""
    from tests.test_journal import _VERSION_2, make_sqlite_file

    path = read_only_mount / "old.db"
    make_sqlite_file(path, *_VERSION_2)
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    before = path.read_bytes()
    with pytest.raises(aioflow.JournalError) as info:
        await open_journal(f"sqlite:///{path}").flows()
    message = str(info.value)
    assert "schema version 2" in message and "version 4" in message, message
    assert "is read-only" in message and "opening it once where it may be written" in message
    assert path.read_bytes() == before
