"""Conductors: running jobs, leases, take-overs, dead letters, give-backs; real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import Conductor, Engine, FlowStatus, JobBoard, JobState
from aioflow.jobs import Job

from .boards import BACKENDS, url_for
from .pg import pg_schema, pg_url, sqlite_or_pg_url

__all__ = ["pg_schema", "pg_url", "sqlite_or_pg_url"]

PROJECT = Path(__file__).resolve().parent.parent
FLOW = "tests.test_conductor:make_flow"


# ------------------------------------------------------------------ the flow of the jobs


def _note(workdir: str, line: str) -> None:
    # One write of one short line in append mode: lines from several processes never mix.
    fd = os.open(Path(workdir) / "executions.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@aioflow.task(provides="a")
async def first(workdir: str, tag: str) -> int:
    _note(workdir, f"{tag} first")
    return 1


@aioflow.task(provides="b")
async def slow(workdir: str, tag: str, a: int, hold: bool = False) -> int:
    """Runs until a file named ``go`` exists in ``workdir`` (when ``hold``)."""
    _note(workdir, f"{tag} slow started")
    while hold and not (Path(workdir) / "go").exists():
        await anyio.sleep(0.02)
    _note(workdir, f"{tag} slow done")
    return a + 1


@aioflow.task(provides="c")
async def last(workdir: str, tag: str, b: int, fail: bool = False) -> int:
    _note(workdir, f"{tag} last")
    if fail:
        raise ValueError(f"job {tag} was told to fail")
    return b + 1


def make_flow() -> aioflow.Linear:
    return aioflow.Linear("job", first, slow, last)


def executions(workdir: Path) -> Counter[str]:
    path = workdir / "executions.log"
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


async def run_until_started(conductor: Conductor, workdir: Path, step: str) -> None:
    """Run ``conductor`` until the log in ``workdir`` has ``step``, then cancel it (a
    graceful shutdown: the jobs it holds are given back)."""
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(conductor.run)
            while executions(workdir)[step] == 0:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# -------------------------------------------------------------------- in one process


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of the board and of the journal (the same database, for fencing)."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"


def make(url: str, **kwargs: Any) -> tuple[JobBoard, Engine]:
    board = JobBoard.open(url, poll=0.01, **kwargs)
    return board, Engine(url)


async def run_ok_and_bad(board: JobBoard, engine: Engine, workdir: Path) -> tuple[Job, Job]:
    """Post a job that succeeds and one that fails, run both on conductor ``c1``, and
    check the first ended COMPLETE; the two jobs as posted."""
    ok = await board.post(FLOW, {"workdir": str(workdir), "tag": "ok"})
    bad = await board.post(FLOW, {"workdir": str(workdir), "tag": "bad", "fail": True})
    async with Conductor(board, engine, name="c1", lease=30, capacity=2) as conductor:
        await conductor.run(max_jobs=2)
    done = await board.get(ok.id)
    assert (done.state, done.status, done.owner) == (JobState.COMPLETE, FlowStatus.SUCCESS, "c1")
    assert done.failures == {}
    return ok, bad


async def test_jobs_complete_with_their_final_status(url: str, tmp_path: Path) -> None:
    board, engine = make(url)
    ok, bad = await run_ok_and_bad(board, engine, tmp_path)
    failed = await board.get(bad.id)
    assert (failed.state, failed.status) == (JobState.FAILED, FlowStatus.REVERTED)
    assert failed.failures["last"].matches(ValueError)
    assert (await engine.outcome(ok.id)).status is FlowStatus.SUCCESS


TOKENS: list[str] = []
SECRET = "conductor-test-secret"


@aioflow.task(provides="approval")
async def ask(external: aioflow.External) -> object:
    TOKENS.append(external.token)
    return external.wait(timeout=3600)


@aioflow.task(provides="answer")
async def answer(approval: str) -> str:
    return f"approved: {approval}"


def waiting_flow() -> aioflow.Linear:
    return aioflow.Linear("approval-job", ask, answer)


async def test_a_waiting_job_is_parked_and_wakes_when_its_token_is_completed(url: str) -> None:
    TOKENS.clear()
    board = JobBoard.open(url, poll=0.01)
    engine = Engine(url, secret=SECRET)
    job = await board.post("tests.test_conductor:waiting_flow")
    async with Conductor(board, engine, lease=30) as conductor:
        await conductor.run(max_jobs=1)
        assert (await board.get(job.id)).state is JobState.WAITING
        assert await conductor.wake_parked() == 0  # nothing completed yet

        await engine.complete(TOKENS[0], "yes")  # as a web app sharing the journal would

        assert await conductor.wake_parked() == 1
        await conductor.run(max_jobs=1)
    done = await board.get(job.id)
    assert (done.state, done.status) == (JobState.COMPLETE, FlowStatus.SUCCESS)
    assert (await engine.outcome(job.id)).atoms["answer"].result == "approved: yes"


async def test_a_flow_that_cannot_be_loaded_fails_its_job(url: str) -> None:
    board, engine = make(url)
    job = await board.post("tests.nowhere:flow")
    async with Conductor(board, engine, lease=30) as conductor:
        await conductor.run(max_jobs=1)
    failed = await board.get(job.id)
    assert failed.state is JobState.FAILED and failed.status is None
    assert failed.failures["<conductor>"].exc_type == "NotFoundError"


async def test_dead_letter_after_max_attempts(url: str, tmp_path: Path) -> None:
    clock = Clock()
    board, engine = make(url, clock=clock)
    job = await board.post(FLOW, {"workdir": str(tmp_path), "tag": "x"})
    for _ in range(3):  # three conductors claimed it and died
        assert await board.claim("dead", 10) is not None
        clock.now += 11
    async with Conductor(board, engine, lease=10, max_attempts=3) as conductor:
        await conductor.run(max_jobs=1)
    failed = await board.get(job.id)
    assert (failed.state, failed.attempts) == (JobState.FAILED, 4)
    assert "dead-lettered" in failed.failures["<conductor>"].message
    assert executions(tmp_path) == Counter()  # never run again


async def test_cancel_gives_jobs_back_and_the_next_conductor_resumes(
    url: str, tmp_path: Path
) -> None:
    board, engine = make(url)
    job = await board.post(FLOW, {"workdir": str(tmp_path), "tag": "j", "hold": True})
    async with Conductor(board, engine, name="c1", lease=30) as conductor:
        await run_until_started(conductor, tmp_path, "j slow started")
    back = await board.get(job.id)
    assert (back.state, back.owner, back.attempts) == (JobState.UNCLAIMED, None, 0)
    assert (await engine.outcome(job.id)).status is FlowStatus.SUSPENDED
    (tmp_path / "go").touch()
    async with Conductor(board, engine, name="c2", lease=30) as conductor:
        await conductor.run(max_jobs=1)
    done = await board.get(job.id)
    assert (done.state, done.owner) == (JobState.COMPLETE, "c2")
    assert executions(tmp_path) == Counter(
        {"j first": 1, "j slow started": 2, "j slow done": 1, "j last": 1}
    )


async def test_a_conductor_that_lost_its_lease_stops_writing(
    shared_url: str, tmp_path: Path
) -> None:
    """Conductor A's renewals never happen (its sleep never returns, as if paused); the
    lease, and its engine's, run out on the injected clock, B claims the job and its
    engine takes the flow over and finishes it; A's flow is then stopped by the fence
    without one more event. (Each conductor has its own journal
    object, as conductors in different processes do.)"""
    url = shared_url
    clock = Clock()
    paused = anyio.Event()

    async def frozen(seconds: float) -> None:
        await paused.wait()

    board_a = JobBoard.open(url, clock=clock, sleep=frozen, poll=0.01)
    board_b = JobBoard.open(url, clock=clock, poll=0.01)
    # The engines' leases (their ownership of the flow) run on the same clock, and
    # A's heartbeat, like its renewals, never comes again.
    engine_a = Engine(url, clock=clock, sleep=frozen, lease=10)
    engine_b = Engine(url, clock=clock, lease=10)
    job = await board_a.post(FLOW, {"workdir": str(tmp_path), "tag": "j", "hold": True})
    a = Conductor(board_a, engine_a, name="A", lease=10)
    b = Conductor(board_b, engine_b, name="B", lease=10)
    async with a, b:
        claimed = await board_a.claim("A", 10)
        assert claimed is not None
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.run_one, claimed)
                while executions(tmp_path)["j slow started"] == 0:
                    await anyio.sleep(0.01)
                await engine_a.journal.flush()
                before = len(await engine_a.journal.load(job.id))
                clock.now += 11
                taken = await board_b.claim("B", 10)
                assert taken is not None and taken.generation == 2
                tg.start_soon(b.run_one, taken)
                while (await engine_b.journal.summary(job.id)).owner != engine_b.id:
                    await anyio.sleep(0.01)  # B's engine took the flow over
                (tmp_path / "go").touch()  # A's atom ends now: its SUCCESS must be refused
        events = await engine_a.journal.load(job.id)
    done = await board_b.get(job.id)
    await board_a.close()
    await board_b.close()
    assert (done.state, done.owner) == (JobState.COMPLETE, "B")
    assert executions(tmp_path)["j last"] == 1
    # B resumed from A's `before` events and wrote the rest; nothing of A's after the take-over.
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    resumed = [e.seq for e in events if e.details.get("resumed")]
    assert resumed == [before + 1]


# ----------------------------------------------------------------- real processes

CONDUCTOR = textwrap.dedent(
    """
    import sys, anyio
    from aioflow import Conductor, Engine, JobBoard

    async def main():
        url, name, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
        board = JobBoard.open(url, poll=0.05)
        engine = Engine(url, lease=lease)  # the flows' ownership lapses with the claims
        async with Conductor(board, engine, name=name, lease=lease, capacity=4) as c:
            print("ready", flush=True)
            await c.run()

    anyio.run(main)
    """
)


@pytest.fixture
def shared_url(sqlite_or_pg_url: str) -> str:
    """A database the conductor processes share for both the board and the journal."""
    return sqlite_or_pg_url


class Conductors:
    """Conductor processes started by a test, all stopped at its end."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.tmp_path = tmp_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, lease: float = 1.0) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-c", CONDUCTOR, self.url, name, str(lease)],
            cwd=PROJECT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()


@pytest.fixture
def conductors(shared_url: str, tmp_path: Path) -> Iterator[Conductors]:
    group = Conductors(shared_url, tmp_path)
    try:
        yield group
    finally:
        group.stop()


async def until(check: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` (sync or async) until it is true; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await anyio.sleep(0.05)


@pytest.mark.slow
async def test_sigkill_mid_job_another_conductor_finishes_without_redoing_atoms(
    conductors: Conductors, tmp_path: Path
) -> None:
    board = JobBoard.open(conductors.url)
    job = await board.post(FLOW, {"workdir": str(tmp_path), "tag": "j", "hold": True})
    a = conductors.start("A")
    await until(lambda: executions(tmp_path)["j slow started"] == 1, "A to start the slow atom")
    a.kill()
    a.wait()
    (tmp_path / "go").touch()
    conductors.start("B")
    done = await board.wait(job.id, timeout=60)
    await board.close()
    assert (done.state, done.owner, done.attempts) == (JobState.COMPLETE, "B", 2)
    # The atom that finished ran once; the one A was running when it died ran again.
    assert executions(tmp_path) == Counter(
        {"j first": 1, "j slow started": 2, "j slow done": 1, "j last": 1}
    )


@pytest.mark.slow
async def test_sigstopped_conductor_past_its_lease_writes_nothing_after_sigcont(
    conductors: Conductors, tmp_path: Path
) -> None:
    board = JobBoard.open(conductors.url)
    engine = Engine(conductors.url)
    job = await board.post(FLOW, {"workdir": str(tmp_path), "tag": "j", "hold": True})
    a = conductors.start("A")
    await until(lambda: executions(tmp_path)["j slow started"] == 1, "A to start the slow atom")

    async def running_recorded() -> bool:
        # Stop A once its writer is idle, not inside a commit holding locks.
        events = [e async for e in engine.journal.events(job.id)]
        return any(e.atom == "slow" and e.state is aioflow.AtomState.RUNNING for e in events)

    await until(running_recorded, "A to record the slow atom RUNNING")
    a.send_signal(signal.SIGSTOP)
    conductors.start("B")

    async def taken_by_b() -> bool:
        return (await board.get(job.id)).owner == "B"

    await until(taken_by_b, "B to take the job over:\n" + conductors.output("B"))
    (tmp_path / "go").touch()
    done = await board.wait(job.id, timeout=60)
    assert (done.state, done.owner) == (JobState.COMPLETE, "B")
    events = await engine.outcome(job.id), [e async for e in engine.journal.events(job.id)]
    a.send_signal(signal.SIGCONT)
    await until(lambda: "aioflow.job_lease_lost" in conductors.output("A"), "A to see its loss")
    after = [e async for e in engine.journal.events(job.id)]
    await board.close()
    assert after == events[1]  # not one event from A
    assert events[0].status is FlowStatus.SUCCESS
    assert executions(tmp_path)["j last"] == 1


@pytest.mark.slow
async def test_three_conductors_run_200_jobs_each_exactly_once(
    conductors: Conductors, tmp_path: Path
) -> None:
    board = JobBoard.open(conductors.url)
    jobs: list[Job] = []
    for i in range(200):
        jobs.append(await board.post(FLOW, {"workdir": str(tmp_path), "tag": f"t{i}"}))
    for name in ("A", "B", "C"):
        conductors.start(name, lease=5.0)
    for job in jobs:
        done = await board.wait(job.id, timeout=120)
        assert done.state is JobState.COMPLETE
    owners = Counter(j.owner for j in await board.jobs())
    await board.close()
    counts = executions(tmp_path)
    assert counts == Counter(
        {
            f"t{i} {step}": 1
            for i in range(200)
            for step in ("first", "slow started", "slow done", "last")
        }
    )
    assert sum(owners.values()) == 200


# ------------------------------------------------------------------------ the command

AIOFLOW = [sys.executable, "-c", "import sys; from aioflow.cli import main; sys.exit(main())"]


def test_cli_posts_lists_and_conducts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aioflow.cli import main

    url = f"sqlite:///{tmp_path}/jobs.db"
    inputs = f'{{"workdir": "{tmp_path}", "tag": "cli"}}'
    assert main(["jobs", "post", FLOW, "--inputs", inputs, "--journal", url, "--key", "k"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["--journal", url, "jobs", "post", FLOW, "--inputs", inputs, "--key", "k"]) == 0
    assert capsys.readouterr().out.strip() == job_id  # idempotent
    assert main(["jobs", "post", FLOW, "--inputs", "[1]", "--journal", url]) == 2
    assert main(["jobs", "list", "--journal", url, "--state", "unclaimed"]) == 0
    listed = capsys.readouterr().out
    assert job_id in listed and "UNCLAIMED" in listed

    proc = subprocess.Popen(
        [*AIOFLOW, "conductor", "--journal", url, "--name", "cli", "--lease", "5"],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        done = anyio.run(JobBoard.open(url).wait, job_id, 60)
        assert done.state is JobState.COMPLETE
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert b"stopped" in out
    assert main(["jobs", "list", "--journal", url]) == 0
    listed = capsys.readouterr().out
    assert "COMPLETE" in listed and "(SUCCESS)" in listed


@pytest.mark.slow
def test_the_jobboard_example_survives_a_killed_conductor() -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT / "examples" / "jobboard.py"), "--jobs", "4"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 of 4 jobs complete; frames rendered twice: none" in result.stdout
    assert "finished by conductor two" in result.stdout


@aioflow.task
async def brief() -> None:
    await anyio.sleep(0.05)


@aioflow.task
async def overlong() -> None:
    await anyio.sleep(5)


def brief_flow() -> aioflow.Linear:
    return aioflow.Linear("brief", brief)


def bounded_flow() -> aioflow.Linear:
    return aioflow.Linear("bounded", aioflow.Linear("part", overlong, timeout=0.3))


async def test_a_job_s_deadline_holds_after_the_job_that_started_first_ended(url: str) -> None:
    """The conductor's jobs share one timer server: the one a first, brief job started
    used to end with it, and a job running beside it then missed its part's deadline."""
    board, engine = make(url)
    first = await board.post("tests.test_conductor:brief_flow")
    await anyio.sleep(0.01)
    bounded = await board.post("tests.test_conductor:bounded_flow")
    async with Conductor(board, engine, lease=30, capacity=2) as conductor:
        with anyio.fail_after(4):  # the part's own task would take 5 s
            await conductor.run(max_jobs=2)
    assert (await board.get(first.id)).status is FlowStatus.SUCCESS
    failed = await board.get(bounded.id)
    assert failed.status is FlowStatus.REVERTED
    assert failed.failures["part"].matches(aioflow.DeadlineExceededError)


@pytest.fixture(params=BACKENDS)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return url_for(request, tmp_path)


async def test_a_job_s_first_claim_starts_its_flow_without_reading_the_journal(
    any_url: str, tmp_path: Path
) -> None:
    """A job's first claim (generation 1) names a flow nobody started: its start reads
    nothing. A later claim reads the flow's summary, and resumes it when it is there."""
    board, engine = make(any_url)
    reads: list[str] = []
    summary = engine.journal.summary

    async def counted(flow_id: str) -> Any:
        reads.append(flow_id)
        return await summary(flow_id)

    engine.journal.summary = counted  # type: ignore[method-assign]
    fresh = await board.post(FLOW, {"workdir": str(tmp_path), "tag": "f"})
    async with Conductor(board, engine, name="c1", lease=30) as conductor:
        await conductor.run(max_jobs=1)
    assert (await board.get(fresh.id)).state is JobState.COMPLETE
    assert reads == []

    # Claimed once and given back before it started: the second claim (generation 3)
    # asks, finds nothing, and starts it.
    unstarted = await board.post(FLOW, {"workdir": str(tmp_path), "tag": "u"})
    claim = await board.claim("elsewhere", 30)
    assert claim is not None and claim.id == unstarted.id
    assert await board.release(claim)
    # Claimed, started and given back mid-flow: the next claim resumes it.
    held = await board.post(FLOW, {"workdir": str(tmp_path), "tag": "h", "hold": True})
    async with Conductor(board, engine, name="c2", lease=30) as conductor:
        await run_until_started(conductor, tmp_path, "h slow started")
    assert (await board.get(unstarted.id)).state is JobState.COMPLETE
    assert reads == [unstarted.id]  # held's first claim read nothing
    (tmp_path / "go").touch()
    async with Conductor(board, engine, name="c3", lease=30) as conductor:
        await conductor.run(max_jobs=1)
    assert (await board.get(held.id)).state is JobState.COMPLETE
    assert reads == [unstarted.id, held.id]
    assert executions(tmp_path)["h first"] == 1  # resumed, not started again


STOLEN: dict[str, Any] = {}


@aioflow.task(provides="stolen")
async def steal_my_job() -> str:
    """Another conductor claims this flow's job while it runs (the claim moves on)."""
    board = JobBoard.open(STOLEN["url"])
    async with board:
        held = await board.get(STOLEN["job"])
        assert await board.release(held)
        thief = await board.claim("thief", 30)
        assert thief is not None and thief.id == held.id
    return "done"


def stealing_flow() -> aioflow.Linear:
    return aioflow.Linear("stealing", steal_my_job)


async def test_a_succeeding_flow_completes_its_job_in_its_last_commit(
    sqlite_or_pg_url: str, tmp_path: Path
) -> None:
    """On a board in the journal's database, the commit of a flow's SUCCESS completes its
    job: no transaction of its own (board.finish is not called). A job whose claim moved
    on meanwhile is left to its new holder, and its flow's events are kept."""
    url = sqlite_or_pg_url
    board, engine = make(url)
    finished: list[tuple[str, JobState]] = []
    finish = board.finish

    async def counted(job: Job, state: JobState, *args: Any, **kwargs: Any) -> bool:
        finished.append((job.id, state))
        return await finish(job, state, *args, **kwargs)

    board.finish = counted  # type: ignore[method-assign]
    _, bad = await run_ok_and_bad(board, engine, tmp_path)
    assert finished == [(bad.id, JobState.FAILED)]  # only the failure took a transaction
    assert not engine.journal._completing and not engine.journal._completed  # type: ignore[attr-defined]

    stolen = await board.post("tests.test_conductor:stealing_flow")
    STOLEN.update(url=url, job=stolen.id)
    async with Conductor(board, engine, name="c2", lease=30) as conductor:
        await conductor.run(max_jobs=1)
    taken = await board.get(stolen.id)
    assert (taken.state, taken.owner) == (JobState.CLAIMED, "thief")  # not completed by c2
    assert (await engine.outcome(stolen.id)).status is FlowStatus.SUCCESS
    assert [state for _, state in finished] == [JobState.FAILED]


async def test_one_renewal_a_round_for_all_the_jobs_a_conductor_holds(
    any_url: str, tmp_path: Path
) -> None:
    """The conductor renews every claim it holds with one renew_many a third of the
    lease (one task for all jobs, one statement on PostgreSQL), never one by one; a job
    whose renewal is refused (its claim moved on) is stopped, the others go on."""
    board, engine = make(any_url)
    rounds: list[set[str]] = []
    renew_many = board.renew_many

    async def counted(jobs: Any, lease: float) -> set[str]:
        renewed = await renew_many(jobs, lease)
        rounds.append({job.id for job in jobs})
        return renewed

    async def one_by_one(job: Job, lease: float) -> bool:
        raise AssertionError("renewed one by one")

    board.renew_many = counted  # type: ignore[method-assign]
    board.renew = one_by_one  # type: ignore[method-assign]
    jobs = [
        await board.post(FLOW, {"workdir": str(tmp_path), "tag": f"j{n}", "hold": True})
        for n in range(3)
    ]
    async with Conductor(board, engine, name="c1", lease=0.6, capacity=3) as conductor:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(conductor.run, max_jobs=3))
                while sum(executions(tmp_path)[f"j{n} slow started"] for n in range(3)) < 3:
                    await anyio.sleep(0.01)
                while not any(len(r) == 3 for r in rounds):
                    await anyio.sleep(0.01)
                # Another conductor takes j0's claim: the next round refuses it.
                stolen = await board.get(jobs[0].id)
                assert await board.release(stolen)
                assert (await board.claim("c2", 30)) is not None
                while conductor.running.keys() != {jobs[1].id, jobs[2].id}:
                    await anyio.sleep(0.01)
                (tmp_path / "go").touch()
    assert all(rounds) and max(len(r) for r in rounds) == 3
    for job in jobs[1:]:
        assert (await board.get(job.id)).state is JobState.COMPLETE
    taken = await board.get(jobs[0].id)
    assert (taken.state, taken.owner) == (JobState.CLAIMED, "c2")
