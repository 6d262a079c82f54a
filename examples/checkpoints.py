"""Checkpoints: stop a release at a checkpoint, move it back, forward, and finish it;
then a periodic job that loops through a checkpoint and keeps a bounded journal.

    python examples/checkpoints.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import anyio

import aioflow
from aioflow import Checkpoint, Linear, Retry


@aioflow.task(provides="artifact")
async def build(version: str) -> str:
    print(f"  build {version}")
    return f"app-{version}.tar"


@build.revert
async def remove_artifact(result: str) -> None:
    print(f"  undo build: delete {result}")


@aioflow.task(provides="report")
async def test(artifact: str) -> str:
    print(f"  test {artifact}")
    return f"{artifact}: 120 passed"


@test.revert
async def discard_report() -> None:
    print("  undo test: discard the report")


@aioflow.task(provides="url")
async def deploy(artifact: str, report: str) -> str:
    print(f"  deploy {artifact} ({report})")
    return "https://example.org/app"


def release() -> Linear:
    return Linear(
        "release",
        Checkpoint("start"),
        build,
        Checkpoint("built"),
        test,
        Checkpoint("tested"),
        deploy,
    )


TICKS = 500
done = 0


@aioflow.task
async def poll() -> None:
    """One round of a periodic job: fails until its last round, so the checkpoint's
    retry sends the flow back to the checkpoint each time."""
    global done
    done += 1
    if done < TICKS:
        raise RuntimeError("more rounds to go")


def periodic() -> Linear:
    return Linear("periodic", Checkpoint("round", retry=Retry.times(TICKS), keep=1), poll)


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'checkpoints.db'}"
        engine = aioflow.Engine(url)
        flow = release()

        print("run until 'tested':")
        outcome = await engine.run(flow, {"version": "1.4"}, flow_id="r1", stop_at="tested")
        print(f"  -> {outcome.status.value} at {outcome.checkpoint!r}")

        print("revert to 'built':")
        outcome = await engine.revert_to("r1", "built", flow)
        print(f"  -> {outcome.status.value} at {outcome.checkpoint!r}")

        print("go to 'tested' again:")
        outcome = await engine.goto("r1", "tested", flow)
        print(f"  -> {outcome.status.value} at {outcome.checkpoint!r}")

        print("resume to the end:")
        outcome = await engine.resume("r1", flow)
        print(f"  -> {outcome.status.value}: {outcome['url']}")

        print(f"a periodic job of {TICKS} rounds with Checkpoint(keep=1):")
        async with aioflow.Engine(url) as looping:
            outcome = await looping.run(periodic(), flow_id="p1")
            events = await looping.journal.load("p1")
        rounds = outcome.atoms["round"].attempts
        print(f"  -> {outcome.status.value} after {rounds} rounds; {len(events)} events kept")


if __name__ == "__main__":
    anyio.run(main)
