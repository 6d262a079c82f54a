"""A free trial as a durable flow: start it, wait out 14 days, remind the customer, wait
up to a day for their approval, then charge (or, without an answer, end the trial).

The 14 days and the day are real durations, kept in the journal: no process is held
meanwhile, and a crash or a restart never restarts them. To show a whole trial in a
moment, this script runs the engine on a test clock it moves by hand.

    python examples/trial.py [path/to/journal.db]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import aioflow
from aioflow.testing import FakeClock

DAY = 24 * 3600


@aioflow.task(provides="trial")
async def start_trial(customer: str) -> str:
    print(f"  trial started for {customer}")
    return f"trial-of-{customer}"


@start_trial.revert
async def end_trial(customer: str) -> None:
    print(f"  no approval in time: the trial of {customer} ends, nothing charged")


@aioflow.task
async def send_reminder(customer: str) -> None:
    print(f"  reminder sent: {customer}, your trial ends tomorrow; approve to keep it")


@aioflow.task(provides="invoice")
async def charge(customer: str, approval: dict[str, str]) -> str:
    print(f"  charged {customer} (approved by {approval['by']})")
    return f"invoice-{customer}"


def make_trial() -> aioflow.Flow:
    return aioflow.Linear(
        "trial",
        start_trial,
        aioflow.Sleep("cool_off", seconds=14 * DAY),
        send_reminder,
        aioflow.Receive("approve", topic="approved", provides="approval", timeout=DAY),
        charge,
        timeout=30 * DAY,  # the whole trial, whatever happens, ends within a month
    )


async def one_trial(engine: aioflow.Engine, clock: FakeClock, customer: str, answer: bool) -> None:
    handle = await engine.start(make_trial(), {"customer": customer})
    await anyio.sleep(0.1)
    print(f"  ... {customer}'s flow rests {(await engine.outcome(handle.flow_id)).status.value}")
    await clock.elapse(14 * DAY)  # two weeks pass
    if answer:
        await engine.send(handle.flow_id, "approved", {"by": customer})
    else:
        await clock.elapse(DAY + 1)
    try:
        outcome = await handle.wait()
        print(f"  {customer}: {outcome.status.value}, {outcome.results['invoice']}")
    except aioflow.FlowFailedError as exc:
        reasons = {name: failure.message for name, failure in exc.outcome.failures.items()}
        print(f"  {customer}: {exc.outcome.status.value} ({reasons})")


async def main(journal: str) -> None:
    clock = FakeClock()
    async with aioflow.Engine(journal, clock=clock.now, sleep=clock.sleep) as engine:
        print("A customer who approves:")
        await one_trial(engine, clock, "ann", answer=True)
        print("A customer who does not answer:")
        await one_trial(engine, clock, "bob", answer=False)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        path = sys.argv[1] if len(sys.argv) > 1 else str(Path(tmp) / "trial.db")
        anyio.run(main, f"sqlite:///{Path(path).resolve()}")
