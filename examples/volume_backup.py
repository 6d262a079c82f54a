"""A volume backup whose copy step reports bytes through a driver's callback, while the
caller prints the flow's progress, the copy's rate and the ETA.

    python examples/volume_backup.py [--size-mb 100]

The "driver" is a plain blocking function with a progress callback, as storage SDKs
have; the task runs it in a worker thread and forwards each callback to aioflow's
``Progress``, which is safe to call from that thread and costs a microsecond or two.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

import aioflow

CHUNK = 1 << 20


def driver_copy(
    source: str, target: str, size: int, on_progress: Callable[[int, int], None]
) -> int:
    """A blocking copy that calls ``on_progress(done, total)`` after every chunk."""
    done = 0
    while done < size:
        time.sleep(0.02)  # the device's pace: 50 MB/s
        done = min(size, done + CHUNK)
        on_progress(done, size)
    return done


@aioflow.task(provides="snapshot")
async def create_snapshot(volume: str) -> str:
    await anyio.sleep(0.05)
    return f"{volume}@snap"


@create_snapshot.revert
async def delete_snapshot(result: object) -> None:
    print(f"  reverted: delete {result}")


@aioflow.task(provides="copied", weight=8.0)
def copy_volume(snapshot: str, size: int, progress: aioflow.Progress) -> int:
    def report(done: int, total: int) -> None:
        progress.update(done, total=total, bytes_done=done, bytes_total=total)

    return driver_copy(snapshot, "/backups/" + snapshot, size, report)


@aioflow.task(provides="backup_id")
async def record_backup(snapshot: str, copied: int) -> str:
    return f"backup-of-{snapshot}-{copied}"


def backup_flow() -> aioflow.Linear:
    return aioflow.Linear("volume-backup", create_snapshot, copy_volume, record_backup)


async def main(size_mb: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'backup.db'}"
        async with aioflow.Engine(url, progress_interval=0.2) as engine:
            handle = await engine.start(backup_flow(), {"volume": "vol-7", "size": size_mb * CHUNK})
            while not handle.done:
                seen = await engine.progress(handle.flow_id)
                copy = seen.atoms["copy_volume"]
                mb = copy.details.get("bytes_done", 0) / CHUNK
                total_mb = copy.details.get("bytes_total", 0) / CHUNK
                rate = f"{copy.rate * total_mb:4.0f} MB/s" if copy.rate else "   -   "
                eta = f"{seen.eta:4.1f} s" if seen.eta is not None else "  -  "
                print(f"  flow {seen.fraction:6.1%}  copy {mb:5.0f} MB  {rate}  ETA {eta}")
                await anyio.sleep(0.1)
            outcome = await handle.wait()
        print(f"{outcome.status.value}: {outcome['backup_id']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    anyio.run(main, parser.parse_args().size_mb)
