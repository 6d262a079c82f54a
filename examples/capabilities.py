"""A backup manager that knows capabilities, not drivers.

Two storage drivers register backup flows in a registry: acme's array takes a live
snapshot of a volume in use, the LVM driver copies a volume that is detached. The
manager asks the registry for what each volume needs and composes one nightly flow from
whatever it gets back. It runs that flow by its registry name on a SQLite journal, stops
it at a checkpoint, and lets a second engine (as another process would) resume it by the
name the journal recorded.

    .venv/bin/python examples/capabilities.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

import aioflow

registry = aioflow.Registry()


# The acme driver: array snapshots, so the volume may stay in use. ---------------------


@aioflow.task
async def acme_snapshot(volume: str) -> str:
    return f"acme-snap-of-{volume}"


@aioflow.task
async def acme_upload(snapshot: str, progress: aioflow.Progress) -> str:
    progress.update(1, total=1, bytes_done=4096)
    return f"s3://backups/acme/{snapshot}"


@registry.provides("backup", "live", vendor="acme", cost=5)
def acme_backup(volume: str) -> aioflow.Linear:
    """Back up ``volume`` while it is attached; publishes ``<volume>/url``."""
    return aioflow.Linear(
        "acme-backup",
        acme_snapshot.using(inject={"volume": volume}, provides=f"{volume}/snapshot"),
        acme_upload.using(rebind={"snapshot": f"{volume}/snapshot"}, provides=f"{volume}/url"),
    )


# The LVM driver: a block copy, so the volume must be detached. -----------------------


@aioflow.task
def lvm_copy(volume: str) -> str:  # a plain def: runs in a worker thread
    return f"file:///srv/backups/lvm/{volume}.img"


@registry.provides("backup", "stateless", vendor="lvm", cost=1)
def lvm_backup(volume: str) -> aioflow.Linear:
    """Copy the detached ``volume`` to a file; publishes ``<volume>/url``."""
    return aioflow.Linear(
        "lvm-backup", lvm_copy.using(inject={"volume": volume}, provides=f"{volume}/url")
    )


# The manager: asks for capabilities, never names a driver. ---------------------------

VOLUMES = {"db-1": "in-use", "db-2": "in-use", "archive": "available"}


@aioflow.task(provides="pruned")
async def prune(keep: int) -> int:
    return 3 * keep  # old backups dropped


@registry.provides("nightly", name="nightly-backup")
def nightly_backup() -> aioflow.Linear:
    """Every volume backed up concurrently, a checkpoint, then the old backups pruned."""
    live = registry.get("backup", "live")  # a volume in use needs a live backup
    # any other volume takes the cheapest backup there is
    cheapest = registry.get("backup", prefer=lambda entry: -entry.attributes["cost"])
    backups = [
        (live if state == "in-use" else cheapest).build(volume=volume)
        for volume, state in VOLUMES.items()
    ]
    return aioflow.Linear(
        "nightly-backup",
        aioflow.Unordered("backups", *backups),
        aioflow.Checkpoint("backed-up"),
        prune,
    )


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        journal = f"sqlite:///{Path(tmp) / 'flows.db'}"
        print("registry:")
        for entry in registry:
            capabilities = ", ".join(sorted(entry.capabilities))
            print(f"  {entry.name:15} {capabilities:17} {dict(entry.attributes)}")

        async with aioflow.Engine(journal, registry=registry) as engine:
            first = await engine.run("nightly-backup", {"keep": 7}, stop_at="backed-up")
        print(f"\nrun 'nightly-backup' to 'backed-up': {first.status.value}")
        for atom, record in first.atoms.items():
            print(f"  {atom:18} {record.state.value}")

        async with aioflow.Engine(journal, registry=registry) as engine:  # a new process
            done = await engine.resume(first.flow_id)
        print(f"\nresumed by name: {done.status.value}")
        for symbol, value in sorted(done.results.items()):
            print(f"  {symbol:16} {value}")


if __name__ == "__main__":
    anyio.run(main)
