"""The bundled demonstration that ``aioflow demo`` runs: back up a volume.

Four tasks, as a storage service would write them: create a snapshot, copy it (reporting
bytes done out of bytes total and the copy's own rate), upload it, record the backup.
Nothing touches a disk or a network: each step sleeps for its share of the demo's length.

The flow is named by reference (``"aioflow._demo:backup_flow"``), so ``aioflow resume``
in a later process rebuilds it without being handed any object. The pace is read from
the ``AIOFLOW_DEMO_SPEED`` environment variable (a factor, default 1.0: about ten
seconds), so a resumed demo keeps the speed it is given then.
"""

from __future__ import annotations

import os
import time

import anyio

from ._flow import Linear
from ._handles import Progress
from ._task import task

REFERENCE = "aioflow._demo:backup_flow"
"""How the demo flow is recorded in the journal, so any process can resume it."""

SPEED_ENV = "AIOFLOW_DEMO_SPEED"
VOLUME_BYTES = 8 * 1024**3
"""The pretend volume: 8 GiB."""

_CHUNKS = 160


def speed() -> float:
    """The demo's pace factor from :data:`SPEED_ENV` (2.0 runs twice as fast)."""
    raw = os.environ.get(SPEED_ENV, "1")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{SPEED_ENV} must be a number, not {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{SPEED_ENV} must be a positive number, not {raw!r}")
    return value


async def _pause(seconds: float) -> None:
    await anyio.sleep(seconds / speed())


@task(provides="snapshot", weight=0.5)
async def create_snapshot(volume: str, progress: Progress) -> str:
    """Ask the storage backend for a point-in-time snapshot of ``volume``."""
    for step in range(1, 5):
        await _pause(0.2)
        progress(step / 4, stage="freezing" if step < 4 else "done")
    return f"snap-{volume}"


@create_snapshot.revert
async def delete_snapshot(result: object) -> None:
    """Drop the snapshot again when a later step failed."""
    await _pause(0.1)


@task(provides="image", weight=6)
async def copy_volume(snapshot: str, size: int, progress: Progress) -> str:
    """Copy the snapshot's bytes to a local image, reporting bytes and throughput."""
    progress.total = size
    chunk = size // _CHUNKS
    started = time.monotonic()
    done = 0
    while done < size:
        await _pause(6.0 / _CHUNKS)
        done = min(done + chunk, size)
        elapsed = time.monotonic() - started
        progress.update(
            done,
            bytes_done=done,
            bytes_total=size,
            bytes_per_second=done / elapsed if elapsed > 0 else 0.0,
        )
    return f"/var/backups/{snapshot}.img"


@task(provides="url", weight=2)
async def upload(image: str, progress: Progress) -> str:
    """Upload the image to the object store, part by part."""
    parts = 20
    for part in range(1, parts + 1):
        await _pause(2.0 / parts)
        progress.update(part, total=parts, parts_done=part, parts_total=parts)
    return "s3://backups/" + image.rsplit("/", 1)[-1]


@task(provides="backup_id", weight=0.5)
async def record(volume: str, url: str) -> str:
    """Record the finished backup in the catalogue."""
    await _pause(0.3)
    return f"backup-{volume}"


def backup_flow() -> Linear:
    """The demo flow: ``volume`` and ``size`` in, ``backup_id`` and ``url`` out."""
    return Linear("backup-demo", create_snapshot, copy_volume, upload, record)
