"""Crash tests with real processes: a child runs a flow on a SQLite journal and is killed
with SIGKILL; a new process, or this one with a fresh engine, resumes it by reference.

What must hold, whatever the moment of the kill:

- the resumed flow ends as an uninterrupted run would (SUCCESS with the results a plain
  sequential evaluation gives, or REVERTED for the flow that fails);
- no atom whose SUCCESS or FAILURE was committed before a kill runs again, and no atom
  whose REVERTED was committed is reverted again (each task keeps a ledger of its runs
  in a file, across processes: see ``tests/crash_child.py``);
- with ``durability="strict"``, an atom starts only once the flow's start and its
  predecessors' results are committed, and a revert starts only once its dependents'
  reverts are: whatever a killed child started, the journal it left shows what that
  built on, so nothing it built on runs again after it;
- a flow killed while reverting goes on reverting, dependents before their dependencies.

The random trials are drawn from ``AIOFLOW_CRASH_SEED`` (a fresh seed when unset); the
seed is printed and named in every failure, so ``AIOFLOW_CRASH_SEED=<seed> pytest
tests/test_crash.py`` draws the same trials again (the kill lands where the child is at
that moment, so timing still varies a little). The named scenarios pin their kill with a
task that hangs until it is killed, and do not depend on timing at all.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

import aioflow
from aioflow import AtomState, Event, EventKind, FlowStatus
from aioflow._replay import FlowState, replay
from tests.crash_child import HANG_ENV, PREDECESSORS, Boom, expected, resume_orphan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
MASTER_SEED = int(os.environ.get("AIOFLOW_CRASH_SEED") or random.SystemRandom().randrange(2**32))
RANDOM_TRIALS = int(os.environ.get("AIOFLOW_CRASH_TRIALS") or 24)
"""How many random trials; raise it to soak the engine (``AIOFLOW_CRASH_TRIALS=500``)."""
PARALLEL = 4
"""Trials run at once: a child's start-up is most of a trial's cost, and is CPU-bound."""
POLL = 0.002
TRIAL_LIMIT = 120.0
"""A safety net, not a measurement: a trial that hangs fails instead of hanging pytest."""
LEDGER_LINES = {"chain": 12, "fanout": 16, "failing": 20}
"""Ledger lines an uninterrupted run writes (two per execute, two per revert)."""

_S = AtomState


@dataclass(frozen=True)
class Kill:
    """When to SIGKILL one child: after it wrote ``lines`` ledger lines, or, with
    ``hang`` (``execute:<atom>`` or ``revert:<atom>``), once that atom hangs and the
    journal shows ``until``; then after ``jitter`` more seconds. With
    ``hang="execute-dies:<atom>"`` (or ``revert-dies``) the child kills itself as that
    atom starts."""

    lines: int = 1
    hang: str | None = None
    until: Callable[[FlowState], bool] | None = None
    jitter: float = 0.0


@dataclass
class Trial:
    """One flow, killed once per entry of ``kills``, then resumed in the test process."""

    name: str
    shape: str
    durability: str
    seed: int
    kills: list[Kill]

    @property
    def ref(self) -> str:
        return f"tests.crash_child:make_{self.shape}"

    def describe(self) -> str:
        return (
            f"trial {self.name} (AIOFLOW_CRASH_SEED={MASTER_SEED}): flow {self.shape},"
            f" durability {self.durability}, seed {self.seed}, kills {self.kills}"
        )


@dataclass
class Segment:
    """One process's part of a trial: the ledger lines it wrote, and the journal's
    events once it was gone (for the last segment, once the flow ended)."""

    who: str
    lines: list[tuple[str, str]]
    events: list[Event]
    killed: bool = False

    def count(self, what: str, atom: str) -> int:
        return self.lines.count((what, atom))


@dataclass
class Result:
    trial: Trial
    segments: list[Segment] = field(default_factory=list)
    outcome: aioflow.Outcome | None = None

    @property
    def interrupted(self) -> list[FlowStatus]:
        """The flow's status, as the journal had it, at each kill that stopped it early."""
        out = []
        for segment in self.segments:
            if segment.killed:
                status = replay(self.trial.name, segment.events).status if segment.events else None
                if status is None or not status.is_final:
                    out.append(status or FlowStatus.PENDING)
        return out


# Reading what a trial left -------------------------------------------------------------


def read_ledger(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    return [(what, atom) for what, atom, _pid in (line.split() for line in lines)]


async def durable_events(url: str, path: Path, flow_id: str) -> list[Event]:
    """What the journal file holds for the flow, through the journal's own reading API."""
    if not path.exists():
        return []
    return [event async for event in aioflow.open_journal(url).events(flow_id)]


def atoms_in(events: list[Event], *states: AtomState) -> set[str]:
    return {str(e.atom) for e in events if e.kind is EventKind.ATOM and e.state in states}


# Running a trial ------------------------------------------------------------------------


async def run_child(
    trial: Trial, kill: Kill, n: int, tmp: Path, url: str, db: Path, ledger: Path
) -> bool:
    """Start child ``n`` (a run, or a resume when the journal knows the flow), kill it as
    ``kill`` says, and return whether it was killed (False: it finished first)."""
    flow_id = trial.name
    if await durable_events(url, db, flow_id):
        args = ["resume", url, flow_id, trial.durability]
    else:
        args = ["run", url, flow_id, trial.durability, trial.ref, str(trial.seed), str(ledger)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop(HANG_ENV, None)
    if kill.hang is not None:
        env[HANG_ENV] = kill.hang
    before = len(read_ledger(ledger))
    err_path = tmp / f"child{n}.err"
    with open(tmp / f"child{n}.out", "wb") as out, open(err_path, "wb") as err:
        process = await anyio.open_process(
            [sys.executable, "-m", "tests.crash_child", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    hang_line = None
    phase = None
    if kill.hang is not None:
        phase, atom = kill.hang.split(":")
        hang_line = ("revert-start" if phase == "revert" else "start", atom)
    dies = phase is not None and phase.endswith("-dies")
    try:
        while process.returncode is None and not dies:
            new = read_ledger(ledger)[before:]
            if hang_line is None:
                if len(new) >= kill.lines:
                    break
            elif hang_line in new and (
                kill.until is None
                or kill.until(replay(flow_id, await durable_events(url, db, flow_id)))
            ):
                break
            await anyio.sleep(POLL)
        await anyio.sleep(kill.jitter)
        if process.returncode is None and not dies:
            process.kill()
        code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
    if code == -signal.SIGKILL:
        return True
    assert code == 0, f"child {n} exited with {code}:\n{err_path.read_text()}"
    assert kill.hang is None, f"child {n} finished although {kill.hang} should hang"
    return False


async def run_trial(trial: Trial, tmp: Path) -> Result:
    """Kill the flow's children as the trial says, then resume it here with a fresh engine."""
    tmp.mkdir()
    db = tmp / "journal.db"
    url = f"sqlite:///{db}"
    ledger = tmp / "ledger"
    ledger.touch()
    result = Result(trial)
    for n, kill in enumerate(trial.kills):
        before = len(read_ledger(ledger))
        killed = await run_child(trial, kill, n, tmp, url, db, ledger)
        events = await durable_events(url, db, trial.name)
        result.segments.append(Segment(f"child {n}", read_ledger(ledger)[before:], events, killed))
        if not killed:
            break
    before = len(read_ledger(ledger))
    events = await durable_events(url, db, trial.name)
    async with aioflow.Engine(url, durability=trial.durability) as engine:  # type: ignore[arg-type]
        try:
            if events:
                result.outcome = await resume_orphan(engine, trial.name)
            else:  # killed before the flow's first event was committed: the run never was
                result.outcome = await engine.run(
                    trial.ref, {"seed": trial.seed, "ledger": str(ledger)}, flow_id=trial.name
                )
        except aioflow.FlowFailedError as exc:
            result.outcome = exc.outcome
    events = await durable_events(url, db, trial.name)
    result.segments.append(Segment("resume", read_ledger(ledger)[before:], events))
    return result


async def run_trials(trials: list[Trial], tmp_path: Path) -> list[Result]:
    """Run the trials, ``PARALLEL`` at a time, and check each; every failure is reported
    together, each with the trial that reproduces it."""
    results: list[Result] = []
    problems: list[str] = []
    limiter = anyio.CapacityLimiter(PARALLEL)

    async def one(trial: Trial) -> None:
        async with limiter:
            try:
                with anyio.fail_after(TRIAL_LIMIT):
                    result = await run_trial(trial, tmp_path / trial.name)
                check(result)
            except Exception as exc:
                problems.append(f"{trial.describe()}:\n  {type(exc).__name__}: {exc}")
                return
        results.append(result)

    async with anyio.create_task_group() as tg:
        for trial in trials:
            tg.start_soon(one, trial)
    assert not problems, "\n".join(problems)
    return results


# Checking a trial ------------------------------------------------------------------------


def check(result: Result) -> None:
    trial, segments, outcome = result.trial, result.segments, result.outcome
    assert outcome is not None
    ledger = "\n".join(
        f"  {s.who}{' (killed)' if s.killed else ''}: {' '.join(f'{w}:{a}' for w, a in s.lines)}"
        for s in segments
    )
    where = f"\nledger by process:\n{ledger}"
    preds = PREDECESSORS[trial.shape]
    total: Counter[tuple[str, str]] = Counter()
    for segment in segments:
        total.update(segment.lines)

    seen_finished: set[str] = set()
    seen_reverted: set[str] = set()
    for k, segment in enumerate(segments):
        for atom in preds:
            for what in ("start", "revert-start"):
                assert segment.count(what, atom) <= 1, (
                    f"{atom}: {what} twice in one process ({segment.who}){where}"
                )
        later = [line for s in segments[k + 1 :] for line in s.lines]
        finished = atoms_in(segment.events, _S.SUCCESS, _S.FAILURE)
        reverted = atoms_in(segment.events, _S.REVERTED)
        for atom in finished:
            assert ("start", atom) not in later, (
                f"{atom} finished durably before {segment.who} ended, yet ran again{where}"
            )
        for atom in reverted:
            assert ("revert-start", atom) not in later, (
                f"{atom} was durably REVERTED before {segment.who} ended, yet was reverted"
                f" again{where}"
            )
        # What became durable in this process was done by it, once: one record each.
        for atom in finished - seen_finished:
            assert segment.count("done", atom) == 1, (
                f"{atom} finished durably in {segment.who} with"
                f" {segment.count('done', atom)} execution records there{where}"
            )
        for atom in reverted - seen_reverted:
            assert segment.count("reverted", atom) == 1, (
                f"{atom} was durably REVERTED in {segment.who} with"
                f" {segment.count('reverted', atom)} revert records there{where}"
            )
        seen_finished |= finished
        seen_reverted |= reverted
        if trial.durability == "strict":
            assert segment.events or not segment.lines, (
                f"tasks ran in {segment.who}, but the journal does not know the flow"
                f" (its start was not committed before they began){where}"
            )
            for what, atom in segment.lines:
                if what == "revert-start":
                    again = [
                        d for d, ps in preds.items() if atom in ps and ("revert-start", d) in later
                    ]
                    assert not again, (
                        f"{atom}'s revert began in {segment.who} before the reverts of {again}"
                        f" were committed, so they ran again after it (durability strict){where}"
                    )
            succeeded = atoms_in(segment.events, _S.SUCCESS)
            for what, atom in segment.lines:
                if what == "start":
                    missing = [p for p in preds[atom] if p not in succeeded]
                    assert not missing, (
                        f"{atom} started in {segment.who} before the SUCCESS of {missing}"
                        f" was committed (durability strict){where}"
                    )

    final = replay(trial.name, segments[-1].events)
    assert final.status is outcome.status, f"journal says {final.status}, outcome {outcome}"
    states = {atom: outcome.atoms[atom].state for atom in preds}
    if trial.shape != "failing":
        assert outcome.status is FlowStatus.SUCCESS, f"{outcome}{where}"
        want = expected(trial.shape, trial.seed)
        assert {s: outcome.results[s] for s in want} == want, f"{outcome.results}{where}"
        assert set(states.values()) == {_S.SUCCESS}, f"{states}{where}"
        return

    assert outcome.status is FlowStatus.REVERTED, f"{outcome}{where}"
    assert set(outcome.failures) == {"explode"}, f"{outcome.failures}{where}"
    assert outcome.failures["explode"].matches(Boom), outcome.failures
    assert f"explode refuses base {trial.seed + 10}" in str(outcome.failures["explode"])
    assert states["prepare"] is states["explode"] is _S.REVERTED, f"{states}{where}"
    assert states["combine"] is _S.PENDING and total["start", "combine"] == 0, f"{states}{where}"
    for atom, state in states.items():
        assert state in (_S.REVERTED, _S.PENDING), f"{atom} ends {state}{where}"
        assert (state is _S.REVERTED) == (total["reverted", atom] >= 1), (
            f"{atom} ends {state} with {total['reverted', atom]} revert records{where}"
        )
        if total["revert-start", atom]:
            assert total["done", atom] >= 1, f"{atom} reverted but never ran{where}"
    # Dependents first: every member of the fan-out is REVERTED before prepare's revert.
    events = segments[-1].events
    first_prepare = min(e.seq for e in events if e.atom == "prepare" and e.state is _S.REVERTING)
    for e in events:
        if e.kind is EventKind.ATOM and e.state is _S.REVERTED and e.atom != "prepare":
            assert e.seq < first_prepare, f"{e.atom} reverted after prepare's revert began"


# The tests -------------------------------------------------------------------------------


def random_trials() -> list[Trial]:
    rng = random.Random(MASTER_SEED)
    trials = []
    for n in range(RANDOM_TRIALS):
        shape = ("chain", "fanout", "failing")[n % 3]
        kills = [
            Kill(lines=rng.randint(1, LEDGER_LINES[shape]), jitter=rng.uniform(0.0, 0.01))
            for _ in range(2 if rng.random() < 0.3 else 1)
        ]
        durability = "batched" if n % 4 == 3 else "strict"
        trials.append(Trial(f"random{n}", shape, durability, rng.randrange(1000), kills))
    return trials


async def test_flows_killed_at_random_moments_resume_without_redoing_finished_work(
    tmp_path: Path,
) -> None:
    print(f"AIOFLOW_CRASH_SEED={MASTER_SEED}")
    results = await run_trials(random_trials(), tmp_path)
    interrupted = [r for r in results if r.interrupted]
    in_revert = [r for r in results if FlowStatus.REVERTING in r.interrupted]
    print(
        f"{len(results)} trials: {len(interrupted)} killed mid-flow,"
        f" {len(in_revert)} of them while reverting"
    )
    assert interrupted, "no kill landed before its flow ended; the trials tested nothing"


def state_of(atom: str, *states: AtomState) -> Callable[[FlowState], bool]:
    def holds(flow: FlowState) -> bool:
        record = flow.atoms.get(atom)
        return record is not None and record.state in states

    return holds


SCENARIOS = {
    # Killed while the last revert runs: it runs again, the others are not repeated.
    "revert-of-the-first-step": (
        "failing",
        [Kill(hang="revert:prepare", until=state_of("prepare", _S.REVERTING))],
        FlowStatus.REVERTING,
    ),
    # Killed while one member of the fan-out reverts; its siblings may be anywhere.
    "revert-inside-the-fan-out": (
        "failing",
        [Kill(hang="revert:w3", until=state_of("w3", _S.REVERTING), jitter=0.003)],
        FlowStatus.REVERTING,
    ),
    # explode failed; w3 is still running when the process dies: on resume the flow
    # reverts, and w3, never seen to finish, is not reverted.
    "sibling-running-after-a-failure": (
        "failing",
        [Kill(hang="execute:w3", until=state_of("explode", _S.FAILURE))],
        FlowStatus.RUNNING,
    ),
    # Killed twice: once as above, then the resuming child while it reverts.
    "twice-forward-then-reverting": (
        "failing",
        [
            Kill(hang="execute:w3", until=state_of("explode", _S.FAILURE)),
            Kill(hang="revert:prepare", until=state_of("prepare", _S.REVERTING)),
        ],
        FlowStatus.REVERTING,
    ),
    # Killed in the join after a fan-out: the four members are not run again.
    "join-after-the-fan-out": (
        "fanout",
        [Kill(hang="execute:combine", until=state_of("combine", _S.RUNNING))],
        FlowStatus.RUNNING,
    ),
    # The process dies as the first task starts: the flow's start must already be in
    # the journal (durability strict), or that task's work would be lost track of.
    "as-the-first-task-starts": ("chain", [Kill(hang="execute-dies:c1")], FlowStatus.RUNNING),
    "as-the-fan-out-starts": ("fanout", [Kill(hang="execute-dies:w1")], FlowStatus.RUNNING),
    # The process dies as the last revert starts: in strict durability the reverts of
    # its dependents are committed by then, so only it runs again.
    "as-the-last-revert-starts": (
        "failing",
        [Kill(hang="revert-dies:prepare")],
        FlowStatus.REVERTING,
    ),
    # Killed in a thread task in the middle of a chain.
    "thread-task-mid-chain": (
        "chain",
        [Kill(hang="execute:c4", until=state_of("c4", _S.RUNNING))],
        FlowStatus.RUNNING,
    ),
}


@pytest.mark.parametrize("durability", ["strict", "batched"])
async def test_flows_killed_at_chosen_points_resume_correctly(
    durability: str, tmp_path: Path
) -> None:
    trials = [
        Trial(f"{name}-{durability}", shape, durability, 7, kills)
        for name, (shape, kills, _) in SCENARIOS.items()
    ]
    results = await run_trials(trials, tmp_path)
    for result in results:
        name = result.trial.name.removesuffix(f"-{durability}")
        _shape, kills, status = SCENARIOS[name]
        assert result.interrupted, result.trial.describe()
        if durability == "strict" or "-dies:" not in str(kills[-1].hang):
            # (batched: a process that dies at once may leave less committed than that)
            assert result.interrupted[-1] is status, result.trial.describe()
        assert all(s.killed for s in result.segments[:-1])


async def test_a_fan_out_member_running_at_the_failure_is_not_reverted(tmp_path: Path) -> None:
    kills = SCENARIOS["sibling-running-after-a-failure"][1]
    trial = Trial("sibling", "failing", "strict", 3, kills)
    (result,) = await run_trials([trial], tmp_path)
    assert result.outcome is not None
    assert result.outcome.atoms["w3"].state is _S.PENDING
    ledger = [line for s in result.segments for line in s.lines]
    assert ("start", "w3") in ledger
    assert ("revert-start", "w3") not in ledger and ("done", "w3") not in ledger


async def test_a_revert_interrupted_by_a_kill_runs_again_and_only_it(tmp_path: Path) -> None:
    kills = SCENARIOS["revert-of-the-first-step"][1]
    trial = Trial("revert", "failing", "strict", 3, kills)
    (result,) = await run_trials([trial], tmp_path)
    reverts = Counter(a for s in result.segments for w, a in s.lines if w == "revert-start")
    assert reverts == {"prepare": 2, "w1": 1, "w2": 1, "w3": 1, "explode": 1}
    executions = Counter(a for s in result.segments for w, a in s.lines if w == "start")
    assert executions == {"prepare": 1, "w1": 1, "w2": 1, "w3": 1, "explode": 1}
