"""A volume backup as an aioflow flow: snapshot, copy with byte progress, upload, record.

Run it twice to see the journal at work: the first run succeeds; the second makes the
upload fail once its copy is done, and the flow is reverted (the snapshot and the copy
are undone, newest first). The journal is a SQLite file you can open with ``sqlite3``.

    python examples/backup.py [path/to/journal.db]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import aioflow

CHUNK = 64 * 1024
SIZE = 16 * CHUNK


@aioflow.task(provides="snapshot_id")
async def create_snapshot(volume_id: str) -> str:
    await anyio.sleep(0.05)
    return f"snap-{volume_id}"


@create_snapshot.revert
async def delete_snapshot(snapshot_id: str | None = None, result: object = None) -> None:
    print(f"  revert: deleting snapshot {result}")


@aioflow.task(provides="backup_path")
async def copy_snapshot(snapshot_id: str, target_dir: str, progress: aioflow.Progress) -> str:
    path = Path(target_dir) / f"{snapshot_id}.img"
    progress.total = SIZE
    with path.open("wb") as out:
        for done in range(CHUNK, SIZE + 1, CHUNK):
            out.write(b"\0" * CHUNK)
            progress.update(done, bytes_done=done)
            await anyio.sleep(0.01)
    return str(path)


@copy_snapshot.revert
def remove_copy(result: object) -> None:
    if isinstance(result, str):
        Path(result).unlink(missing_ok=True)
        print(f"  revert: removed {result}")


@aioflow.task(provides="url")
async def upload(backup_path: str, fail: bool = False) -> str:
    if fail:
        raise ConnectionError("object store refused the upload")
    return f"s3://backups/{Path(backup_path).name}"


@aioflow.task
def record(volume_id: str, url: str) -> None:
    print(f"  recorded backup of {volume_id} at {url}")


def backup_flow() -> aioflow.Linear:
    """The flow, built by a factory so a later process can resume it by reference."""
    return aioflow.Linear("volume-backup", create_snapshot, copy_snapshot, upload, record)


def show(event: aioflow.Event) -> None:
    if event.kind is aioflow.EventKind.PROGRESS and event.progress is not None:
        bar = "#" * int(event.progress * 20)
        print(f"\r  {event.atom:<15} [{bar:<20}] {event.progress:5.0%}", end="", flush=True)
    elif event.kind is aioflow.EventKind.ATOM and event.state is aioflow.AtomState.SUCCESS:
        print(f"\r  {event.atom:<15} done{' ' * 30}")


async def main(journal_path: str) -> None:
    target = tempfile.mkdtemp(prefix="aioflow-backup-")
    async with aioflow.Engine(f"sqlite:///{journal_path}", listeners=[show]) as engine:
        print("A backup that succeeds:")
        outcome = await engine.run(
            "backup:backup_flow", {"volume_id": "vol-1", "target_dir": target}
        )
        print(f"  -> {outcome.status.value}, url={outcome['url']}")

        print("A backup whose upload fails, and is reverted:")
        try:
            await engine.run(
                backup_flow(), {"volume_id": "vol-2", "target_dir": target, "fail": True}
            )
        except aioflow.FlowFailedError as error:
            print(f"  -> {error.outcome.status.value}: {error.failures['upload']}")

        print("The journal now holds:")
        for summary in await engine.journal.flows():
            print(f"  {summary.flow_id}  {summary.name}  {summary.status.value}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    default = str(Path(tempfile.mkdtemp(prefix="aioflow-")) / "journal.db")
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else default)
