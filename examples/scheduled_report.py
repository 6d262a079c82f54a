"""A report posted by a schedule and run by a conductor.

A schedule posts one job per tick, exactly once however many conductors run; here the
tick is every second (in production: ``cron="0 3 * * *"``, ``timezone="Europe/Berlin"``),
and the script stops once three reports are done. The board and the journal share one
SQLite file.

    python examples/scheduled_report.py [path/to/jobs.db]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import aioflow
from aioflow.jobs import Conductor, JobBoard, JobState

REPORTS = 3


@aioflow.task(provides="report")
async def make_report(team: str) -> str:
    return f"report for {team}"


def report_flow() -> aioflow.Flow:
    return aioflow.Linear("report", make_report)


async def main(url: str) -> None:
    async with JobBoard.open(url, poll=0.1) as board:
        schedule = await board.schedule(
            "reports", "scheduled_report:report_flow", every=1, inputs={"team": "ops"}
        )
        print(f"schedule {schedule.name!r}: a job every {schedule.every:g} s")
        conductor = Conductor(board, aioflow.Engine(url), name="reporter")
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            with anyio.fail_after(30):
                done = await board.jobs(JobState.COMPLETE)
                while len(done) < REPORTS:
                    await board.wait_for_work(0.1)  # a short pause (or a new job)
                    done = await board.jobs(JobState.COMPLETE)
            tg.cancel_scope.cancel()
        for job in sorted(done, key=lambda j: j.created)[:REPORTS]:
            print(f"  {job.name}: {job.state.value}")
        await board.unschedule("reports")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the conductor imports the flow
    with tempfile.TemporaryDirectory() as tmp:
        path = sys.argv[1] if len(sys.argv) > 1 else str(Path(tmp) / "jobs.db")
        anyio.run(main, f"sqlite:///{Path(path).resolve()}")
