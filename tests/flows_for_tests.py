"""Flows that tests name by reference (``"tests.flows_for_tests:make_flow"``)."""

from __future__ import annotations

import aioflow

NOT_A_FLOW = 42


@aioflow.task(provides="doubled")
async def double(number: int) -> int:
    return number * 2


@aioflow.task(provides="total")
async def add_one(doubled: int) -> int:
    return doubled + 1


def make_flow() -> aioflow.Linear:
    """``number`` -> ``doubled`` -> checkpoint ``halfway`` -> ``total``."""
    return aioflow.Linear("referenced", double, aioflow.Checkpoint("halfway"), add_one)
