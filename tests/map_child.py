"""A flow with a Map, and the child process that runs it until tests/test_map.py kills it.

``python -m tests.map_child URL LEDGER COUNT`` runs ``tests.map_child:make_album`` as flow
``album``. Every task appends a line to the **ledger** (``O_APPEND``, one write per line)
when it starts and when it ends: ``list``, ``start thumbs[i]``, ``done thumbs[i]``, so the
test can count how often each piece of code ran, across processes.
"""

from __future__ import annotations

import os
import sys

import anyio

import aioflow


def note(ledger: str, line: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@aioflow.task(provides="images")
async def list_images(count: int, ledger: str) -> list[int]:
    note(ledger, "list")
    return list(range(count))


@aioflow.task(provides="thumb")
async def resize(image: int, ledger: str, context: aioflow.TaskContext) -> int:
    note(ledger, f"start {context.atom}")
    await anyio.sleep(0.02)
    note(ledger, f"done {context.atom}")
    return image * image


@aioflow.task(provides="album")
async def publish(thumbs: list[int]) -> int:
    return sum(thumbs)


def make_album() -> aioflow.Linear:
    thumbs = aioflow.Map(
        "thumbs", resize, over="images", item="image", provides="thumbs", max_parallel=4
    )
    return aioflow.Linear("album", list_images, thumbs, publish)


async def main(url: str, ledger: str, count: str) -> None:
    async with aioflow.Engine(url, lease=0.25) as engine:
        outcome = await engine.run(
            "tests.map_child:make_album", {"count": int(count), "ledger": ledger}, flow_id="album"
        )
    print(outcome.status.value, flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
