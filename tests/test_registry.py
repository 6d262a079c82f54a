"""The registry: matching by capabilities and attributes, lookup errors, preference,
building members with unique and stable names, entry-point providers from a real
distribution, and flows run and resumed by registry name on a SQLite journal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

import aioflow
from aioflow import FlowStatus, Registry
from aioflow._compile import compile_flow
from aioflow._registry import providers_table

ROOT = Path(__file__).resolve().parent.parent
RUNS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    RUNS.clear()
    yield


@aioflow.task(provides="snapshot")
async def snapshot(volume: str) -> str:
    RUNS["snapshot"] += 1
    return f"snap-{volume}"


@aioflow.task(provides="url")
async def upload(snapshot: str) -> str:
    RUNS["upload"] += 1
    return f"s3://{snapshot}"


def backup_flow() -> aioflow.Linear:
    return aioflow.Linear("backup", snapshot, upload)


def drivers() -> Registry:
    """Three drivers, registered in the order acme, lvm, ceph."""
    registry = Registry()
    registry.register(backup_flow(), "backup", "live", name="acme", vendor="acme", speed=3)
    registry.register(snapshot, "backup", "stateless", name="lvm", vendor="lvm", speed=1)
    registry.register(upload, "backup", "live", "stateless", name="ceph", vendor="ceph")
    return registry


def names(entries: list[aioflow.RegistryEntry]) -> list[str]:
    return [e.name for e in entries]


def tree_names(member: Any) -> list[str]:
    inner = [n for m in getattr(member, "members", ()) for n in tree_names(m)]
    return [member.name, *inner]


# ---------------------------------------------------------------- matching and ordering


def test_find_returns_every_entry_with_all_capabilities_in_registration_order() -> None:
    registry = drivers()

    assert names(registry.find("backup")) == ["acme", "lvm", "ceph"]
    assert names(registry.find("live")) == ["acme", "ceph"]
    assert names(registry.find("live", "stateless")) == ["ceph"]
    assert names(registry.find()) == ["acme", "lvm", "ceph"]
    assert registry.find("backup", "teleport") == []


def test_find_filters_on_equal_attributes_and_a_missing_attribute_never_matches() -> None:
    registry = drivers()

    assert names(registry.find("backup", vendor="lvm")) == ["lvm"]
    assert names(registry.find(speed=3)) == ["acme"]
    assert registry.find("backup", vendor="nobody") == []
    assert names(registry.find("backup", name="ceph")) == ["ceph"]


def test_get_returns_the_one_match() -> None:
    entry = drivers().get("backup", vendor="acme")

    assert entry.name == "acme"
    assert entry.capabilities == {"backup", "live"}
    assert entry.attributes == {"vendor": "acme", "speed": 3}
    assert entry.kind == "flow"
    assert isinstance(entry.obj, aioflow.Linear)


def test_get_with_no_match_says_what_was_asked_and_which_capabilities_exist() -> None:
    with pytest.raises(aioflow.NotFoundError) as info:
        drivers().get("backup", "teleport", vendor="acme")

    message = str(info.value)
    assert "'backup', 'teleport'" in message and "vendor='acme'" in message
    assert "capabilities in the registry: 'backup', 'live', 'stateless'" in message
    assert isinstance(info.value, LookupError)


def test_get_with_no_match_on_attributes_lists_the_entries_with_those_capabilities() -> None:
    with pytest.raises(aioflow.NotFoundError, match="entries with those capabilities: 'acme'"):
        drivers().get("backup", "live", vendor="lvm", speed=3)


def test_get_on_an_empty_registry_says_it_is_empty() -> None:
    with pytest.raises(aioflow.NotFoundError, match="the registry is empty"):
        Registry().get("backup")


def test_get_with_several_matches_is_ambiguous_and_lists_the_candidates() -> None:
    with pytest.raises(aioflow.AmbiguousError) as info:
        drivers().get("backup", "live")

    assert info.value.candidates == ("acme", "ceph")
    assert "'acme' ('backup', 'live'; vendor='acme', speed=3)" in str(info.value)
    assert "prefer=" in str(info.value)


def test_prefer_an_attribute_picks_the_highest_value() -> None:
    assert drivers().get("backup", prefer="speed").name == "acme"


def test_prefer_a_key_function_picks_the_highest_key() -> None:
    entry = drivers().get("backup", prefer=lambda e: -e.attributes.get("speed", 99))

    assert entry.name == "lvm"  # the lowest speed gives the highest key


def test_prefer_breaks_ties_by_registration_order() -> None:
    registry = Registry()
    for name in ("first", "second", "third"):
        registry.register(backup_flow(), "backup", name=name, tier=1 if name != "first" else 0)

    assert registry.get("backup", prefer="tier").name == "second"


def test_prefer_that_no_candidate_has_a_value_for_is_still_ambiguous() -> None:
    with pytest.raises(aioflow.AmbiguousError, match="none has a value for prefer='colour'"):
        drivers().get("backup", prefer="colour")


def test_find_with_prefer_orders_best_first_and_entries_without_a_value_last() -> None:
    assert names(drivers().find("backup", prefer="speed")) == ["acme", "lvm", "ceph"]

    def slowest(entry: aioflow.RegistryEntry) -> int | None:
        speed = entry.attributes.get("speed")
        return None if speed is None else -speed

    assert names(drivers().find("backup", prefer=slowest)) == ["lvm", "acme", "ceph"]


def test_prefer_values_that_cannot_be_compared_raise_naming_them() -> None:
    registry = drivers()
    registry.register(backup_flow(), "backup", name="odd", speed="fast")

    with pytest.raises(TypeError, match="cannot be compared"):
        registry.get("backup", prefer="speed")


def test_a_lone_word_that_is_an_entry_name_gets_that_entry_before_capabilities() -> None:
    registry = drivers()
    registry.register(backup_flow(), "nightly", name="backup")

    assert registry.get("backup").name == "backup"  # the name, though three provide 'backup'
    assert names(registry.find("backup")) == ["acme", "lvm", "ceph"]  # find: capabilities
    with pytest.raises(aioflow.AmbiguousError):
        registry.get("backup", "live")  # more than a lone word: capabilities


def test_name_keyword_combines_a_name_with_attribute_filters() -> None:
    registry = drivers()

    assert registry.get(name="lvm", vendor="lvm").name == "lvm"
    with pytest.raises(aioflow.NotFoundError, match="name='lvm'"):
        registry.get(name="lvm", vendor="acme")


def test_lookups_refuse_capabilities_given_as_one_collection() -> None:
    with pytest.raises(TypeError, match="separate arguments"):
        drivers().get(["backup", "live"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="separate arguments"):
        drivers().find(("backup",))  # type: ignore[arg-type]


def test_get_with_no_condition_wants_a_registry_of_one() -> None:
    with pytest.raises(aioflow.AmbiguousError, match="3 registry entries match everything"):
        drivers().get()


def test_registry_reports_its_names_and_capabilities() -> None:
    registry = drivers()

    assert len(registry) == 3
    assert "lvm" in registry and "nope" not in registry
    assert registry.capabilities == {"backup", "live", "stateless"}
    assert registry.get("lvm") == registry.find(vendor="lvm")[0]
    assert repr(registry) == "<Registry with 3 entries>"


def test_providers_table_lists_name_capabilities_and_attributes_in_order() -> None:
    assert providers_table(drivers()) == [
        ("acme", ["backup", "live"], {"vendor": "acme", "speed": 3}),
        ("lvm", ["backup", "stateless"], {"vendor": "lvm", "speed": 1}),
        ("ceph", ["backup", "live", "stateless"], {"vendor": "ceph"}),
    ]


# ---------------------------------------------------------------- registering


def test_register_defaults_the_name_to_the_object_name() -> None:
    registry = Registry()
    registry.register(snapshot, "snap")
    registry.register(backup_flow(), "backup")
    registry.register(backup_flow, "backup")

    assert names(list(registry)) == ["snapshot", "backup", "backup_flow"]
    assert names([registry.get("backup_flow")]) == ["backup_flow"]
    assert registry.get("backup_flow").kind == "factory"


def test_register_refuses_a_taken_name_naming_the_holder() -> None:
    registry = drivers()

    with pytest.raises(ValueError, match=r"already has an entry named 'acme'.*name=\.\.\."):
        registry.register(backup_flow(), "backup", name="acme")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((["backup", "live"],), {}, TypeError, "separate arguments"),
        ((3,), {}, TypeError, "must be a string"),
        (("two words",), {}, ValueError, "without spaces"),
        (("",), {}, ValueError, "non-empty word"),
        (("backup",), {"name": "mod:attr"}, ValueError, "contains ':'"),
        (("backup",), {"name": ""}, ValueError, "non-empty string"),
        (("backup",), {"prefer": "speed"}, ValueError, "'prefer' is reserved"),
    ],
)
def test_register_refuses_bad_capabilities_and_names(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    registry = Registry()

    with pytest.raises(error, match=match):
        registry.register(backup_flow(), *args, **kwargs)
    assert len(registry) == 0


def test_register_refuses_what_cannot_become_a_flow_member() -> None:
    async def not_a_task() -> None: ...

    registry = Registry()
    with pytest.raises(TypeError, match=r"decorate it with @aioflow\.task"):
        registry.register(not_a_task, "x")
    with pytest.raises(TypeError, match="not 42"):
        registry.register(42, "x")
    with pytest.raises(ValueError, match="register it with name="):
        registry.register(lambda: backup_flow(), "x")


def test_provides_registers_tasks_factories_and_task_classes_and_returns_them() -> None:
    registry = Registry()

    @registry.provides("upload", vendor="acme")
    @aioflow.task(provides="url")
    async def acme_upload(snapshot: str) -> str:
        return snapshot

    @registry.provides("backup")
    def acme_backup(volume: str) -> aioflow.Linear:
        return aioflow.Linear(f"backup-{volume}", snapshot.using(inject={"volume": volume}))

    @registry.provides("verify", name="verifier")
    class Verify(aioflow.Task):
        async def execute(self, url: str) -> bool:
            return True

    assert isinstance(acme_upload, aioflow.Task)
    assert registry.get("upload").obj is acme_upload and registry.get("upload").kind == "task"
    assert registry.get("backup").build(volume="v1").name == "backup-v1"
    assert isinstance(Verify(), aioflow.Task)
    built = registry.get("verifier").build()
    assert isinstance(built, Verify) and built.name == "Verify"


def test_entry_attributes_are_read_only() -> None:
    entry = drivers().get("acme")

    with pytest.raises(TypeError):
        entry.attributes["vendor"] = "evil"  # type: ignore[index]


def test_merge_adds_all_entries_or_none() -> None:
    registry = drivers()
    other = Registry()
    other.register(backup_flow(), "backup", name="zfs")
    other.register(backup_flow(), "backup", name="acme")

    with pytest.raises(ValueError, match="'acme'"):
        registry.merge(other)
    assert "zfs" not in registry

    fresh = Registry()
    assert fresh.merge(drivers()) == ["acme", "lvm", "ceph"]


# ---------------------------------------------------------------- building


def test_build_copies_so_the_registered_object_never_changes() -> None:
    registry = drivers()
    entry = registry.get("acme")

    built = entry.build()
    assert isinstance(built, aioflow.Linear)
    built.add(aioflow.Checkpoint("extra"))
    built.members[0].inject["volume"] = "changed"  # type: ignore[union-attr]

    registered = registry.get("acme").obj
    assert isinstance(registered, aioflow.Linear)
    assert tree_names(registered) == ["backup", "snapshot", "upload"]
    assert snapshot.inject == {}
    assert built.members[0] is not snapshot


def test_building_one_entry_twice_gives_distinct_names_for_the_whole_tree() -> None:
    entry = drivers().get("acme")

    first, second, third = entry.build(), entry.build(), entry.build()

    assert tree_names(first) == ["backup", "snapshot", "upload"]
    assert tree_names(second) == ["backup-2", "snapshot-2", "upload-2"]
    assert tree_names(third) == ["backup-3", "snapshot-3", "upload-3"]


def test_renaming_skips_names_already_taken_in_the_tree() -> None:
    registry = Registry()
    registry.register(
        aioflow.Linear("job", snapshot, upload.using(name="snapshot-2")), "x", name="job"
    )
    entry = registry.get("job")

    entry.build()
    second = entry.build()

    assert tree_names(second) == ["job-2", "snapshot-3", "snapshot-2-2"]


async def test_two_builds_compose_into_one_flow_that_runs(sqlite_url: str) -> None:
    registry = Registry()

    @registry.provides("backup")
    def backup_of(volume: str) -> aioflow.Linear:
        return aioflow.Linear(
            "backup",
            snapshot.using(inject={"volume": volume}, provides=f"{volume}/snap"),
            upload.using(rebind={"snapshot": f"{volume}/snap"}, provides=f"{volume}/url"),
        )

    entry = registry.get("backup")
    flow = aioflow.Unordered("all", entry.build(volume="a"), entry.build(volume="b"))

    outcome = await aioflow.Engine(sqlite_url).run(flow)
    assert outcome["a/url"] == "s3://snap-a" and outcome["b/url"] == "s3://snap-b"
    assert set(outcome.atoms) == {"snapshot", "upload", "snapshot-2", "upload-2"}


def test_builds_are_numbered_the_same_way_every_time() -> None:
    def compose() -> aioflow.Linear:
        entry = drivers().get("acme")
        return aioflow.Linear("root", entry.build(), entry.build(), entry.build())

    first, second = compile_flow(compose(), ["volume"]), compile_flow(compose(), ["volume"])
    assert first.fingerprint == second.fingerprint


@st.composite
def flow_trees(draw: st.DrawFn) -> aioflow.Flow:
    """Small trees of flows, tasks and checkpoints with names unique in the tree, drawn
    from few words, some already carrying a ``-n`` suffix, so that renames collide."""
    words = st.sampled_from(["a", "b", "a-2", "b-2", "a-3", "root", "root-2"])
    picked = draw(st.lists(words, min_size=1, max_size=7, unique=True))

    def make(names: list[str]) -> aioflow.Flow:
        head, rest = names[0], names[1:]
        members: list[Any] = []
        while rest:
            cut = draw(st.integers(1, len(rest)))
            part, rest = rest[:cut], rest[cut:]
            kind = draw(st.sampled_from(["task", "checkpoint", "flow"]))
            if kind == "flow":
                members.append(make(part))
            else:
                members.append(
                    snapshot.using(name=part[0]) if kind == "task" else aioflow.Checkpoint(part[0])
                )
                if part[1:]:
                    members.append(make(part[1:]))
        return aioflow.Linear(head, *members)

    return make(picked)


@given(tree=flow_trees(), builds=st.integers(1, 4))
def test_any_number_of_builds_of_any_tree_have_distinct_and_reproducible_names(
    tree: aioflow.Flow, builds: int
) -> None:
    def names_of_builds() -> list[list[str]]:
        registry = Registry()
        registry.register(tree, "x", name="entry")
        entry = registry.get("entry")
        return [tree_names(entry.build()) for _ in range(builds)]

    built = names_of_builds()
    every = [n for names in built for n in names]
    assert len(every) == len(set(every))
    assert built[0] == tree_names(tree)
    assert names_of_builds() == built


def test_separate_entry_objects_number_their_own_builds() -> None:
    registry = drivers()

    assert tree_names(registry.get("acme").build()) == tree_names(registry.get("acme").build())


def test_inside_a_factory_every_lookup_of_one_entry_shares_the_numbering() -> None:
    registry = drivers()

    @registry.provides("nightly")
    def nightly() -> aioflow.Linear:
        live = registry.get("backup", "live", vendor="acme")
        fast = registry.get("backup", prefer="speed")  # the same entry, another object
        return aioflow.Linear("nightly", live.build(), fast.build())

    for _ in range(2):  # and the same names on every build of the factory
        built = registry.get("nightly").build()
        assert tree_names(built) == [
            "nightly",
            *["backup", "snapshot", "upload", "backup-2", "snapshot-2", "upload-2"],
        ]


async def test_deciders_of_a_renamed_graph_see_the_original_names() -> None:
    @aioflow.task(provides="ok")
    async def check() -> bool:
        return True

    @aioflow.task(provides="done")
    async def act() -> str:
        return "acted"

    seen: list[set[str]] = []

    def decide(results: Any) -> bool:
        seen.append(set(results))
        return bool(results["check"])

    registry = Registry()
    registry.register(aioflow.Graph("g", check, act).link(check, act, decider=decide), "x")
    entry = registry.get("g")
    flow = aioflow.Linear("root", entry.build(), entry.build())

    outcome = await aioflow.Engine().run(flow)
    assert outcome.atoms["act-2"].state is aioflow.AtomState.SUCCESS
    assert seen == [{"check"}, {"check"}]


def test_build_passes_keywords_to_a_factory_and_refuses_wrong_ones() -> None:
    registry = Registry()

    @registry.provides("backup")
    def backup_of(volume: str) -> aioflow.Linear:
        return aioflow.Linear(f"backup-{volume}", snapshot.using(inject={"volume": volume}))

    entry = registry.get("backup")
    assert entry.build(volume="v9").name == "backup-v9"
    with pytest.raises(TypeError, match=r"'backup_of'.*cannot be called with \(size=\.\.\.\)"):
        entry.build(size=3)
    with pytest.raises(TypeError, match="only a factory's build takes arguments"):
        drivers().get("acme").build(volume="v1")


def test_a_factory_that_returns_no_flow_member_is_refused_naming_the_entry() -> None:
    registry = Registry()
    registry.register(lambda: "oops", "x", name="bad")

    with pytest.raises(TypeError, match="registry entry 'bad': its factory returned 'oops'"):
        registry.get("bad").build()


# ---------------------------------------------------------------- entry points


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path to install small distributions into; modules imported from
    it are forgotten afterwards."""
    directory = tmp_path / "site"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    before = set(sys.modules)
    yield directory
    for name in set(sys.modules) - before:
        del sys.modules[name]


def install(site: Path, dist: str, modules: dict[str, str], entry_points: str) -> None:
    """Write modules and a ``<dist>-1.0.dist-info`` with the given entry_points.txt."""
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


DRIVER = """
    import aioflow

    @aioflow.task(provides="snapshot")
    async def snap(volume: str) -> str:
        return "snap-" + volume

    def register(registry):
        registry.register(aioflow.Linear("{name}", snap), "backup", vendor="{name}")

    as_registry = aioflow.Registry()
    as_registry.register(aioflow.Linear("{name}-reg", snap), "backup", "from-registry")

    def half(registry):
        registry.register(aioflow.Linear("{name}-half", snap), "backup")
        raise RuntimeError("driver misconfigured")
"""


def test_load_entry_points_loads_providers_and_reports_failing_ones_by_name(
    site: Path,
) -> None:
    mod = f"drv_{uuid.uuid4().hex[:8]}"
    group = f"aioflow.test_{uuid.uuid4().hex[:8]}"
    install(
        site,
        "acme_drivers",
        {mod: DRIVER.format(name="acme"), f"{mod}_broken": "import no_such_module_anywhere\n"},
        f"""
        [{group}]
        acme = {mod}:register
        broken = {mod}_broken:register
        registry = {mod}:as_registry
        half = {mod}:half
        not_callable = {mod}:snap
        clash = {mod}:register
        """,
    )
    registry = Registry()

    with capture_logs() as logs:
        report = registry.load_entry_points(group)

    assert report.loaded == ["acme", "registry"]
    failed = dict(report.failed)
    assert list(failed) == ["broken", "half", "not_callable", "clash"]
    assert isinstance(failed["broken"], ModuleNotFoundError)
    assert "driver misconfigured" in str(failed["half"])
    assert "a provider must be a function taking the registry" in str(failed["not_callable"])
    assert "already has an entry named 'acme'" in str(failed["clash"])
    assert names(list(registry)) == ["acme", "acme-reg"]  # 'half' added nothing
    assert registry.get("backup", vendor="acme").name == "acme"
    warned = [e["provider"] for e in logs if e["event"] == "aioflow.provider_failed"]
    assert warned == ["broken", "half", "not_callable", "clash"]


def test_load_entry_points_does_not_load_a_provider_twice(site: Path) -> None:
    mod = f"drv_{uuid.uuid4().hex[:8]}"
    install(
        site, "lvm_drivers", {mod: DRIVER.format(name="lvm")}, f"[g.{mod}]\nlvm = {mod}:register\n"
    )
    registry = Registry()

    assert registry.load_entry_points(f"g.{mod}").loaded == ["lvm"]
    again = registry.load_entry_points(f"g.{mod}")

    assert again.loaded == [] and again.failed == []
    assert len(registry) == 1


def test_load_entry_points_reads_the_aioflow_providers_group_by_default(site: Path) -> None:
    mod = f"drv_{uuid.uuid4().hex[:8]}"
    install(
        site,
        f"{mod}_dist",
        {mod: DRIVER.format(name=mod)},
        f"[aioflow.providers]\n{mod} = {mod}:register\n",
    )
    registry = Registry()

    report = registry.load_entry_points()

    assert mod in report.loaded
    assert registry.get("backup", vendor=mod).name == mod


# ---------------------------------------------------------------- running by name


def job_registry() -> Registry:
    """A registry whose 'nightly' factory composes two builds of one driver around a
    checkpoint, as a process would build it at start-up."""
    registry = Registry()

    @registry.provides("backup", "live")
    def driver(volume: str) -> aioflow.Linear:
        return aioflow.Linear(
            "driver",
            snapshot.using(inject={"volume": volume}, provides=f"{volume}/snap"),
            upload.using(rebind={"snapshot": f"{volume}/snap"}, provides=f"{volume}/url"),
        )

    @registry.provides("nightly", name="nightly")
    def nightly() -> aioflow.Linear:
        live = registry.get("backup", "live")
        return aioflow.Linear(
            "nightly", live.build(volume="a"), aioflow.Checkpoint("half"), live.build(volume="b")
        )

    registry.register(snapshot, "snap")
    return registry


async def test_run_by_name_and_resume_by_the_recorded_name_with_a_new_engine(
    sqlite_url: str,
) -> None:
    async with aioflow.Engine(sqlite_url, registry=job_registry()) as engine:
        first = await engine.run("nightly", stop_at="half")
    assert first.status is FlowStatus.SUSPENDED
    assert RUNS == {"snapshot": 1, "upload": 1}

    async with aioflow.Engine(sqlite_url, registry=job_registry()) as engine:
        done = await engine.resume(first.flow_id)
        (summary,) = await engine.journal.flows()

    assert done.status is FlowStatus.SUCCESS
    assert done["a/url"] == "s3://snap-a" and done["b/url"] == "s3://snap-b"
    assert RUNS == {"snapshot": 2, "upload": 2}  # the first half did not run again
    assert summary.ref == "nightly"


async def test_run_by_capability_records_the_entry_name_so_resume_finds_it_again(
    sqlite_url: str,
) -> None:
    first = await aioflow.Engine(sqlite_url, registry=job_registry()).run("nightly")
    assert first.status is FlowStatus.SUCCESS
    (summary,) = await aioflow.open_journal(sqlite_url).flows()
    assert summary.ref == "nightly"

    registry = job_registry()  # a later process where a second flow provides 'nightly'
    registry.register(backup_flow(), "nightly", name="other")
    again = await aioflow.Engine(sqlite_url, registry=registry).resume(first.flow_id)
    assert again.status is FlowStatus.SUCCESS


async def test_every_run_by_name_in_one_process_builds_the_same_structure() -> None:
    engine = aioflow.Engine(registry=job_registry())

    first = await engine.run("nightly")
    second = await engine.run("nightly")

    assert list(first.atoms) == list(second.atoms)
    assert "snapshot-2" in first.atoms


async def test_run_by_an_unknown_name_or_a_task_entry_is_not_found() -> None:
    engine = aioflow.Engine(registry=job_registry())

    with pytest.raises(aioflow.NotFoundError, match="capabilities in the registry"):
        await engine.run("weekly")
    with pytest.raises(aioflow.NotFoundError, match="'snapshot' holds a task, not a flow"):
        await engine.run("snapshot", {"volume": "v"})


RESUMABLE = """
import sys
import anyio
import aioflow

LOG = sys.argv[2]
registry = aioflow.Registry()


@aioflow.task(provides="snapshot")
def snap(volume: str) -> str:
    with open(LOG, "a") as f:
        f.write("snap " + volume + "\\n")
    return "snap-" + volume


@registry.provides("backup")
def driver(volume: str) -> aioflow.Linear:
    return aioflow.Linear("driver", snap.using(inject={"volume": volume}, provides=volume))


@registry.provides("nightly", name="nightly")
def nightly() -> aioflow.Linear:
    entry = registry.get("backup")
    return aioflow.Linear("nightly", entry.build(volume="a"), aioflow.Checkpoint("half"),
                          entry.build(volume="b"))


async def main() -> None:
    engine = aioflow.Engine(sys.argv[3], registry=registry)
    if sys.argv[1] == "run":
        outcome = await engine.run("nightly", stop_at="half")
    else:
        outcome = await engine.resume(sys.argv[4])
    print(outcome.flow_id, outcome.status.value, outcome.results.get("b"))

anyio.run(main)
"""


def test_another_process_resumes_a_flow_by_its_registry_name(
    tmp_path: Path, sqlite_url: str
) -> None:
    script, log = tmp_path / "manager.py", tmp_path / "ran.log"
    script.write_text(RESUMABLE)

    def manager(*args: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    flow_id, status, _ = manager("run", str(log), sqlite_url)
    assert status == "SUSPENDED"
    assert manager("resume", str(log), sqlite_url, flow_id) == [flow_id, "SUCCESS", "snap-b"]
    assert log.read_text().splitlines() == ["snap a", "snap b"]


def test_capabilities_example_runs_and_resumes_by_name() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "capabilities.py")],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert "run 'nightly-backup' to 'backed-up': SUSPENDED" in done.stdout
    assert "resumed by name: SUCCESS" in done.stdout
    assert "acme_snapshot-2" in done.stdout
    assert "file:///srv/backups/lvm/archive.img" in done.stdout
