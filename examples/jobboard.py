"""Jobs on a board, run by two conductor processes; one is killed, the other takes over.

Two producers post render jobs to a jobboard in a SQLite file (the journal shares the
file, so the journal can fence the writes of a conductor that lost its lease). Two
conductors, each its own process, claim the jobs under a 2-second lease. Once conductor
"one" is halfway through a job it is killed with SIGKILL; its lease runs out and
conductor "two" claims the job and resumes its flow from the journal: the frames it had
rendered are not rendered again.

    python examples/jobboard.py [--jobs N] [path/to/jobs.db]

Give ``postgresql://...`` instead of a path to use PostgreSQL for both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import anyio

import aioflow

LEASE = 2.0
FRAMES = 4


def _log(workdir: str, line: str) -> None:
    fd = os.open(Path(workdir) / "rendered.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def frame(n: int) -> aioflow.Task:
    @aioflow.task(name=f"frame{n}", provides=f"f{n}")
    async def render(scene: str, workdir: str) -> str:
        await anyio.sleep(0.3)
        _log(workdir, f"{scene} frame{n} by {os.environ.get('CONDUCTOR', '?')}")
        return f"{scene}-{n}.png"

    return render


@aioflow.task(provides="movie")
async def assemble(scene: str, f0: str, f1: str, f2: str, f3: str) -> str:
    return f"{scene}.mp4"


def render_flow() -> aioflow.Linear:
    """The flow each job runs: render the frames one by one, then assemble them."""
    return aioflow.Linear("render", *(frame(n) for n in range(FRAMES)), assemble)


async def conduct(url: str, name: str) -> None:
    """A conductor process: run jobs until killed or interrupted."""
    board = aioflow.JobBoard.open(url, poll=0.1)
    async with aioflow.Conductor(board, aioflow.Engine(url), name=name, lease=LEASE) as c:
        await c.run()


async def produce(board: aioflow.JobBoard, producer: str, count: int, workdir: str) -> list[str]:
    ids = []
    for i in range(count):
        job = await board.post(
            "jobboard:render_flow",
            {"scene": f"{producer}-scene{i}", "workdir": workdir},
            idempotency_key=f"{producer}-{i}",
        )
        ids.append(job.id)
    return ids


def start_conductor(url: str, name: str) -> subprocess.Popen[bytes]:
    """Start ``python jobboard.py --conduct URL NAME``, a conductor in its own process."""
    return subprocess.Popen(
        [sys.executable, __file__, "--conduct", url, name],
        env={**os.environ, "CONDUCTOR": name},
    )


async def main(url: str, jobs: int, workdir: str) -> int:
    board = aioflow.JobBoard.open(url, poll=0.1)
    ids: list[str] = []

    async def producer(name: str, count: int) -> None:
        ids.extend(await produce(board, name, count, workdir))

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer, "alice", jobs - jobs // 2)
        tg.start_soon(producer, "bob", jobs // 2)
    print(f"posted {len(ids)} jobs to {url}")

    procs = {name: start_conductor(url, name) for name in ("one", "two")}
    try:
        log = Path(workdir) / "rendered.log"
        while not (log.exists() and " by one" in log.read_text()):  # noqa: ASYNC110
            await anyio.sleep(0.05)
        victim = next(j for j in await board.jobs(aioflow.JobState.CLAIMED) if j.owner == "one")
        procs["one"].send_signal(signal.SIGKILL)
        procs["one"].wait()
        print(f"killed conductor one while it ran job {victim.id}")
        done = [await board.wait(job_id, timeout=120) for job_id in ids]
        taken = await board.get(victim.id)
        print(f"job {victim.id} was finished by conductor {taken.owner} (claim {taken.attempts})")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        await board.close()
    complete = sum(job.state is aioflow.JobState.COMPLETE for job in done)
    renders = Counter(line.rsplit(" by ", 1)[0] for line in log.read_text().splitlines())
    again = sorted(key for key, n in renders.items() if n > 1)
    print(f"{complete} of {len(ids)} jobs complete; frames rendered twice: {again or 'none'}")
    print("(a frame renders twice only if its conductor died while rendering it)")
    return 0 if complete == len(ids) else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--conduct"]:
        anyio.run(conduct, sys.argv[2], sys.argv[3])
        sys.exit(0)
    args = sys.argv[1:]
    count = 6
    if args[:1] == ["--jobs"]:
        count, args = int(args[1]), args[2:]
    with tempfile.TemporaryDirectory() as tmp:
        target = args[0] if args else str(Path(tmp) / "jobs.db")
        url = target if "://" in target else "sqlite:///" + str(Path(target).absolute())
        sys.exit(anyio.run(main, url, count, tmp))
