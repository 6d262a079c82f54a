"""Tasks: the decorator and Task subclasses, the signature -> requirements rules,
injection, unpacking of results, reverts, worker threads, timeouts, retries, and the
Progress and Failure objects a task deals with."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from typing import Any

import anyio
import pytest
import structlog

import aioflow
from aioflow import AtomState, EventKind, FlowStatus, Linear, Unordered


async def run(
    flow: aioflow.Flow, inputs: dict[str, Any] | None = None, **options: Any
) -> aioflow.Outcome:
    return await aioflow.Engine(**options).run(flow, inputs)


async def run_failing(
    flow: aioflow.Flow, inputs: dict[str, Any] | None = None, **options: Any
) -> aioflow.FlowFailedError:
    with pytest.raises(aioflow.FlowFailedError) as info:
        await run(flow, inputs, **options)
    return info.value


def atom_states(events: list[aioflow.Event], atom: str) -> list[Any]:
    return [e.state for e in events if e.kind is EventKind.ATOM and e.atom == atom]


# --------------------------------------------------------------------- defining tasks


class Upload(aioflow.Task):
    provides = "url"

    async def execute(self, backup_id: str) -> str:
        return f"https://store.example/{backup_id}"


class TestTaskDecorator:
    def test_bare_decorator_makes_a_task_named_after_the_function(self) -> None:
        @aioflow.task
        async def fetch(url: str) -> str:
            return url

        assert isinstance(fetch, aioflow.Task)
        assert fetch.name == "fetch"
        assert fetch.provides is None
        assert [(r.param, r.symbol, r.optional) for r in fetch.requires] == [("url", "url", False)]

    def test_keywords_set_every_option(self) -> None:
        policy = aioflow.Retry.times(3)

        @aioflow.task(
            name="get_page",
            provides="page",
            rebind={"url": "address"},
            inject={"limit": 5},
            retry=policy,
            timeout=2.5,
            weight=3.0,
            attributes={"team": "web"},
        )
        async def fetch(url: str, limit: int) -> str:
            return url

        assert fetch.name == "get_page"
        assert fetch.provides == "page"
        assert fetch.provided == ("page",)
        assert fetch.rebind == {"url": "address"}
        assert fetch.inject == {"limit": 5}
        assert fetch.retry is policy
        assert fetch.timeout == 2.5
        assert fetch.weight == 3.0
        assert fetch.attributes == {"team": "web"}
        assert [(r.param, r.symbol) for r in fetch.requires] == [("url", "address")]

    def test_provides_takes_a_tuple_or_list_of_symbols(self) -> None:
        @aioflow.task(provides=("host", "port"))
        async def split() -> tuple[str, int]:
            return "h", 1

        @aioflow.task(provides=["host", "port"])
        async def split_list() -> tuple[str, int]:
            return "h", 1

        assert split.provides == ("host", "port")
        assert split_list.provides == ("host", "port")
        assert split.provided == ("host", "port")

    def test_weight_defaults_to_one(self) -> None:
        @aioflow.task
        async def work() -> None:
            pass

        assert work.weight == 1.0
        assert work.attributes == {}

    def test_the_decorated_function_can_still_be_called_directly(self) -> None:
        @aioflow.task(provides="total")
        def add(a: int, b: int) -> int:
            return a + b

        assert add(2, 3) == 5

    async def test_a_flow_runs_the_task_and_publishes_its_result(self) -> None:
        @aioflow.task(provides="greeting")
        async def greet(who: str) -> str:
            return f"hello {who}"

        outcome = await run(Linear("hello", greet), {"who": "ada"})

        assert outcome.status is FlowStatus.SUCCESS
        assert outcome["greeting"] == "hello ada"
        assert outcome.atoms["greet"].state is AtomState.SUCCESS
        assert outcome.atoms["greet"].result == "hello ada"


class TestTaskSubclass:
    def test_default_name_is_the_class_name_and_provides_comes_from_the_class(self) -> None:
        upload = Upload()

        assert upload.name == "Upload"
        assert upload.provides == "url"
        assert [r.symbol for r in upload.requires] == ["backup_id"]

    async def test_a_subclass_runs_in_a_flow(self) -> None:
        outcome = await run(Linear("up", Upload()), {"backup_id": "b-1"})

        assert outcome["url"] == "https://store.example/b-1"

    async def test_constructor_keywords_override_the_class_defaults(self) -> None:
        policy = aioflow.Retry.times(2)
        upload = Upload(
            "upload_copy",
            provides="copy_url",
            rebind={"backup_id": "copy_id"},
            retry=policy,
            timeout=5,
            weight=2.0,
            attributes={"tier": "cold"},
        )

        assert upload.name == "upload_copy"
        assert upload.provides == "copy_url"
        assert upload.retry is policy
        assert upload.timeout == 5
        assert upload.weight == 2.0
        assert upload.attributes == {"tier": "cold"}
        assert Upload.provides == "url"
        assert Upload().provides == "url"
        outcome = await run(Linear("up", upload), {"copy_id": "b-2"})
        assert outcome["copy_url"] == "https://store.example/b-2"

    async def test_constructor_inject_supplies_a_constant(self) -> None:
        class Scale(aioflow.Task):
            provides = "scaled"

            async def execute(self, value: int, factor: int) -> int:
                return value * factor

        outcome = await run(Linear("s", Scale(inject={"factor": 10})), {"value": 4})

        assert outcome["scaled"] == 40


# --------------------------------------------------------------------- requirements


class TestRequirements:
    def test_a_parameter_with_a_default_is_optional(self) -> None:
        @aioflow.task
        async def greet(name: str, greeting: str = "hello") -> str:
            return greeting

        assert {r.param: r.optional for r in greet.requires} == {"name": False, "greeting": True}

    async def test_an_optional_parameter_takes_the_symbol_when_it_exists(self) -> None:
        @aioflow.task(provides="message")
        async def greet(name: str, greeting: str = "hello") -> str:
            return f"{greeting} {name}"

        given = await run(Linear("f", greet), {"name": "ada", "greeting": "hi"})
        default = await run(Linear("f", greet), {"name": "ada"})

        assert given["message"] == "hi ada"
        assert default["message"] == "hello ada"

    async def test_an_optional_parameter_takes_an_earlier_atoms_symbol(self) -> None:
        @aioflow.task(provides="greeting")
        async def choose() -> str:
            return "howdy"

        @aioflow.task(provides="message")
        async def greet(name: str, greeting: str = "hello") -> str:
            return f"{greeting} {name}"

        outcome = await run(Linear("f", choose, greet), {"name": "ada"})

        assert outcome["message"] == "howdy ada"

    async def test_rebind_maps_a_parameter_to_another_symbol(self) -> None:
        @aioflow.task(provides="size", rebind={"path": "backup_path"})
        async def measure(path: str) -> int:
            return len(path)

        assert [r.symbol for r in measure.requires] == ["backup_path"]
        outcome = await run(Linear("f", measure), {"backup_path": "/tmp/abc"})
        assert outcome["size"] == len("/tmp/abc")

    async def test_inject_supplies_a_constant_that_is_not_a_requirement(self) -> None:
        @aioflow.task(provides="region", inject={"zone": "eu-west-1a"})
        async def region_of(zone: str) -> str:
            return zone[:-1]

        assert region_of.requires == ()
        outcome = await run(Linear("f", region_of))
        assert outcome["region"] == "eu-west-1"

    def test_using_returns_a_copy_and_leaves_the_original_unchanged(self) -> None:
        @aioflow.task(provides="x", attributes={"team": "a"})
        async def base(a: int, b: int = 0) -> int:
            return a + b

        policy = aioflow.Retry.times(4)
        copy = base.using(
            name="copy",
            provides="y",
            rebind={"a": "alpha"},
            inject={"b": 7},
            retry=policy,
            timeout=3,
            weight=0.5,
            attributes={"team": "b"},
        )

        assert copy is not base
        assert (copy.name, copy.provides, copy.rebind, copy.inject) == (
            "copy",
            "y",
            {"a": "alpha"},
            {"b": 7},
        )
        assert (copy.retry, copy.timeout, copy.weight, copy.attributes) == (
            policy,
            3,
            0.5,
            {"team": "b"},
        )
        assert [r.symbol for r in copy.requires] == ["alpha"]
        assert (base.name, base.provides, base.rebind, base.inject) == ("base", "x", {}, {})
        assert (base.retry, base.timeout, base.weight, base.attributes) == (
            None,
            None,
            1.0,
            {"team": "a"},
        )
        assert [r.symbol for r in base.requires] == ["a", "b"]

    def test_using_reads_no_signature_again_but_still_checks_its_options(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Reading a signature (inspect, annotations) costs tens of microseconds: a copy
        # keeps its original's, since it has the same functions.
        @aioflow.task
        async def base(a: int, b: int = 0) -> int:
            return a + b

        def no_signatures(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("using() read a signature again")

        monkeypatch.setattr(aioflow._task, "_params", no_signatures)
        copy = base.using(name="copy", rebind={"a": "alpha"}, inject={"b": 1})

        assert [r.symbol for r in copy.requires] == ["alpha"]
        with pytest.raises(ValueError, match="nope"):
            base.using(rebind={"nope": "x"})
        with pytest.raises(ValueError, match="timeout"):
            base.using(timeout=-1)

    def test_changing_a_copys_attributes_leaves_the_original_alone(self) -> None:
        @aioflow.task(attributes={"team": "a"})
        async def base() -> None:
            pass

        copy = base.using(name="copy")
        copy.attributes["team"] = "b"

        assert base.attributes == {"team": "a"}

    async def test_using_lets_one_definition_appear_twice_in_a_flow(self) -> None:
        @aioflow.task
        async def double(n: int) -> int:
            return n * 2

        flow = Linear(
            "twice",
            double.using(name="first", provides="m"),
            double.using(name="second", provides="result", rebind={"n": "m"}),
        )
        outcome = await run(flow, {"n": 3})

        assert outcome["m"] == 6
        assert outcome["result"] == 12
        assert set(outcome.atoms) == {"first", "second"}

    async def test_a_task_subclass_instance_supports_using(self) -> None:
        upload = Upload()
        mirror = upload.using(name="mirror", provides="mirror_url")

        outcome = await run(Linear("both", upload, mirror), {"backup_id": "b"})

        assert outcome["url"] == outcome["mirror_url"] == "https://store.example/b"


# --------------------------------------------------------------------- injection


class TestInjection:
    async def test_annotated_parameters_are_injected_not_required(self) -> None:
        seen: dict[str, Any] = {}

        @aioflow.task(provides="done")
        async def work(
            n: int,
            p: aioflow.Progress,
            handle: aioflow.External,
            ctx: aioflow.TaskContext,
        ) -> bool:
            seen.update(p=p, handle=handle, ctx=ctx)
            return True

        assert [r.symbol for r in work.requires] == ["n"]
        await run(Linear("f", work), {"n": 1})
        assert isinstance(seen["p"], aioflow.Progress)
        assert isinstance(seen["handle"], aioflow.External)
        assert isinstance(seen["ctx"], aioflow.TaskContext)

    async def test_unannotated_progress_external_and_context_are_injected(self) -> None:
        seen: dict[str, Any] = {}

        @aioflow.task
        async def work(n, progress, external, context):  # type: ignore[no-untyped-def]
            seen.update(progress=progress, external=external, context=context)

        assert [r.symbol for r in work.requires] == ["n"]
        await run(Linear("f", work), {"n": 1})
        assert isinstance(seen["progress"], aioflow.Progress)
        assert isinstance(seen["external"], aioflow.External)
        assert isinstance(seen["context"], aioflow.TaskContext)

    async def test_injected_names_are_not_looked_up_even_when_the_symbol_exists(self) -> None:
        seen: dict[str, Any] = {}

        @aioflow.task
        async def work(progress):  # type: ignore[no-untyped-def]
            seen["progress"] = progress

        await run(Linear("f", work), {"progress": "not a Progress"})

        assert isinstance(seen["progress"], aioflow.Progress)

    async def test_task_context_describes_the_running_atom(self) -> None:
        seen: dict[str, Any] = {}

        @aioflow.task
        async def work(context: aioflow.TaskContext, progress: aioflow.Progress) -> None:
            seen.update(
                flow_id=context.flow_id,
                atom=context.atom,
                attempt=context.attempt,
                same_progress=context.progress is progress,
                external=context.external,
            )
            context.log.info("working", step=1)

        with structlog.testing.capture_logs() as logs:
            await aioflow.Engine().run(Linear("f", work), flow_id="flow-1")

        assert seen["flow_id"] == "flow-1"
        assert seen["atom"] == "work"
        assert seen["attempt"] == 1
        assert seen["same_progress"]
        assert isinstance(seen["external"], aioflow.External)
        entry = next(e for e in logs if e["event"] == "working")
        assert entry["flow_id"] == "flow-1"
        assert entry["atom"] == "work"
        assert entry["attempt"] == 1
        assert entry["step"] == 1

    async def test_progress_reports_reach_listeners_and_success_is_one(self) -> None:
        events: list[aioflow.Event] = []

        @aioflow.task
        async def copy(progress: aioflow.Progress) -> None:
            progress.update(512, total=1024, bytes_done=512)

        outcome = await run(Linear("f", copy), listeners=[events.append])

        reports = [e for e in events if e.kind is EventKind.PROGRESS and e.atom == "copy"]
        assert reports[0].progress == 0.5
        assert reports[0].details == {"bytes_done": 512}
        assert outcome.atoms["copy"].progress == 1.0


# --------------------------------------------------------------------- provides unpacking


class TestProvidesUnpacking:
    async def test_a_sequence_result_is_unpacked_into_the_symbols(self) -> None:
        @aioflow.task(provides=("host", "port"))
        async def parse(address: str) -> list[Any]:
            host, port = address.split(":")
            return [host, int(port)]

        outcome = await run(Linear("f", parse), {"address": "db:5432"})

        assert outcome["host"] == "db"
        assert outcome["port"] == 5432

    async def test_a_mapping_result_is_unpacked_by_key(self) -> None:
        @aioflow.task(provides=("host", "port"))
        async def parse() -> dict[str, Any]:
            return {"port": 5432, "host": "db", "ignored": True}

        @aioflow.task(provides="dsn")
        async def dsn(host: str, port: int) -> str:
            return f"{host}:{port}"

        outcome = await run(Linear("f", parse, dsn))

        assert outcome["host"] == "db"
        assert outcome["port"] == 5432
        assert outcome["dsn"] == "db:5432"

    async def test_a_result_of_the_wrong_length_fails_the_flow_naming_the_task(self) -> None:
        @aioflow.task(provides=("a", "b"))
        async def split() -> list[int]:
            return [1, 2, 3]

        error = await run_failing(Linear("f", split))

        assert set(error.failures) == {"split"}
        assert error.failures["split"].matches(ValueError)
        assert "split" in error.failures["split"].message
        assert "split" in str(error)
        assert error.outcome.status is FlowStatus.REVERTED

    async def test_a_mapping_lacking_a_symbol_fails_the_flow(self) -> None:
        @aioflow.task(provides=("a", "b"))
        async def split() -> dict[str, int]:
            return {"a": 1}

        error = await run_failing(Linear("f", split))

        assert "'b'" in error.failures["split"].message

    async def test_a_scalar_result_for_several_symbols_fails_the_flow(self) -> None:
        @aioflow.task(provides=("a", "b"))
        async def split() -> int:
            return 12

        error = await run_failing(Linear("f", split))

        assert error.failures["split"].matches(TypeError)


# --------------------------------------------------------------------- reverting


class TestRevert:
    def test_revert_decorator_returns_the_function_unchanged(self) -> None:
        @aioflow.task
        async def create() -> None:
            pass

        async def delete(result: object) -> None:
            pass

        assert create.revert(delete) is delete
        assert create.has_revert

    async def test_revert_receives_execute_arguments_result_and_flow_failures(self) -> None:
        calls: dict[str, tuple[Any, ...]] = {}

        @aioflow.task(provides="backup_id")
        async def create_backup(volume_id: str) -> str:
            return "b-1"

        @create_backup.revert
        async def delete_backup(volume_id: str, result: object, flow_failures: dict) -> None:
            calls["create_backup"] = (volume_id, result, flow_failures)

        @aioflow.task
        async def upload(backup_id: str) -> None:
            raise RuntimeError("disk full")

        @upload.revert
        async def undo_upload(backup_id: str, result: object, flow_failures: dict) -> None:
            calls["upload"] = (backup_id, result, flow_failures)

        error = await run_failing(Linear("backup", create_backup, upload), {"volume_id": "v1"})

        volume_id, result, failures = calls["create_backup"]
        assert volume_id == "v1"
        assert result == "b-1"
        assert set(failures) == {"upload"}
        assert failures["upload"].matches(RuntimeError)
        backup_id, failed_result, _ = calls["upload"]
        assert backup_id == "b-1"
        assert isinstance(failed_result, aioflow.Failure)
        assert failed_result.matches(RuntimeError)
        assert failed_result.message == "disk full"
        assert error.outcome.status is FlowStatus.REVERTED
        assert error.outcome.atoms["create_backup"].state is AtomState.REVERTED
        assert error.outcome.atoms["upload"].state is AtomState.REVERTED
        assert isinstance(error.__cause__, RuntimeError)

    async def test_revert_may_ask_for_only_some_arguments(self) -> None:
        results: list[object] = []

        @aioflow.task(provides="x")
        async def make(a: int, b: int) -> int:
            return a + b

        @make.revert
        def unmake(result: object) -> None:
            results.append(result)

        @aioflow.task
        async def boom(x: int) -> None:
            raise ValueError("no")

        await run_failing(Linear("f", make, boom), {"a": 1, "b": 2})

        assert results == [3]

    async def test_reverts_run_newest_first(self) -> None:
        order: list[str] = []

        def step(name: str, fail: bool = False) -> aioflow.Task:
            @aioflow.task(name=name)
            async def work() -> None:
                if fail:
                    raise RuntimeError(name)

            @work.revert
            async def undo() -> None:
                order.append(name)

            return work

        await run_failing(Linear("f", step("one"), step("two"), step("three", fail=True)))

        assert order == ["three", "two", "one"]

    def test_a_revert_asking_for_an_unknown_parameter_is_refused_at_registration(
        self,
    ) -> None:
        @aioflow.task
        async def create(volume_id: str) -> None:
            pass

        with pytest.raises(TypeError, match="bogus"):

            @create.revert
            async def delete(volume_id: str, bogus: int) -> None:
                pass

    def test_a_refused_revert_is_not_registered(self) -> None:
        @aioflow.task
        async def create(volume_id: str) -> None:
            pass

        with pytest.raises(TypeError):

            @create.revert
            async def delete(bogus: int) -> None:
                pass

        assert not create.has_revert

    def test_a_revert_parameter_with_a_default_is_accepted(self) -> None:
        @aioflow.task
        async def create() -> None:
            pass

        async def delete(reason: str = "cleanup") -> None:
            pass

        assert create.revert(delete) is delete

    async def test_without_a_revert_reverting_still_passes_through_its_states(self) -> None:
        events: list[aioflow.Event] = []

        @aioflow.task
        async def plain() -> None:
            pass

        @aioflow.task
        async def boom() -> None:
            raise RuntimeError("boom")

        error = await run_failing(Linear("f", plain, boom), listeners=[events.append])

        assert not plain.has_revert
        assert error.outcome.atoms["plain"].state is AtomState.REVERTED
        assert atom_states(events, "plain") == [
            AtomState.RUNNING,
            AtomState.SUCCESS,
            AtomState.REVERTING,
            AtomState.REVERTED,
        ]
        assert atom_states(events, "boom")[-2:] == [AtomState.REVERTING, AtomState.REVERTED]

    async def test_a_task_subclass_revert_method_is_called(self) -> None:
        undone: list[tuple[Any, ...]] = []

        class Reserve(aioflow.Task):
            provides = "seat"

            async def execute(self, flight: str) -> str:
                return f"{flight}-12A"

            async def revert(self, flight: str, result: object, flow_failures: dict) -> None:
                undone.append((flight, result, sorted(flow_failures)))

        @aioflow.task
        async def pay(seat: str) -> None:
            raise RuntimeError("card declined")

        error = await run_failing(Linear("trip", Reserve(), pay), {"flight": "LH1"})

        assert undone == [("LH1", "LH1-12A", ["pay"])]
        assert error.outcome.atoms["Reserve"].state is AtomState.REVERTED

    async def test_a_sync_revert_runs(self) -> None:
        undone: list[object] = []

        class Reserve(aioflow.Task):
            provides = "seat"

            def execute(self) -> str:
                return "12A"

            def revert(self, result: object) -> None:
                undone.append(result)

        @aioflow.task
        def pay(seat: str) -> None:
            raise RuntimeError("card declined")

        await run_failing(Linear("trip", Reserve(), pay))

        assert undone == ["12A"]


# --------------------------------------------------------------------- sync tasks


class TestSyncTasks:
    async def test_a_sync_task_runs_in_a_worker_thread_without_blocking_the_loop(
        self,
    ) -> None:
        done = threading.Event()
        threads: dict[str, int] = {}

        @aioflow.task(provides="slept")
        def sleeper() -> bool:
            threads["sync"] = threading.get_ident()
            time.sleep(0.3)
            done.set()
            return True

        @aioflow.task(provides="ticks")
        async def ticker() -> int:
            threads["async"] = threading.get_ident()
            ticks = 0
            while not done.is_set() and ticks < 1000:
                await anyio.sleep(0.01)
                ticks += 1
            return ticks

        outcome = await run(Unordered("both", sleeper, ticker))

        assert outcome["slept"] is True
        assert outcome["ticks"] >= 10
        assert threads["async"] == threading.get_ident()
        assert threads["sync"] != threads["async"]

    async def test_a_sync_task_result_is_published(self) -> None:
        @aioflow.task(provides="total")
        def add(a: int, b: int) -> int:
            return a + b

        outcome = await run(Linear("f", add), {"a": 2, "b": 3})

        assert outcome["total"] == 5


# --------------------------------------------------------------------- timeouts


class TestTimeout:
    async def test_an_async_task_past_its_timeout_fails_with_timeout_error(self) -> None:
        @aioflow.task(timeout=0.1)
        async def slow() -> None:
            await anyio.sleep(5)

        started = time.monotonic()
        error = await run_failing(Linear("f", slow))

        assert time.monotonic() - started < 3
        assert error.failures["slow"].matches(TimeoutError)
        assert error.outcome.atoms["slow"].state is AtomState.REVERTED

    async def test_a_sync_task_past_its_timeout_fails_with_timeout_error(self) -> None:
        @aioflow.task(timeout=0.1)
        def slow() -> str:
            time.sleep(0.5)
            return "too late"

        error = await run_failing(Linear("f", slow))

        assert error.failures["slow"].matches(TimeoutError)

    async def test_the_timeout_applies_to_each_attempt(self) -> None:
        attempts: list[int] = []

        @aioflow.task(provides="ok", timeout=0.2, retry=aioflow.Retry.times(2))
        async def flaky(context: aioflow.TaskContext) -> bool:
            attempts.append(context.attempt)
            if context.attempt == 1:
                await anyio.sleep(5)
            await anyio.sleep(0.15)
            return True

        outcome = await run(Linear("f", flaky))

        assert outcome["ok"] is True
        assert attempts == [1, 2]
        assert outcome.atoms["flaky"].attempts == 2

    async def test_a_task_within_its_timeout_succeeds(self) -> None:
        @aioflow.task(provides="ok", timeout=2)
        async def quick() -> bool:
            await anyio.sleep(0.01)
            return True

        outcome = await run(Linear("f", quick))

        assert outcome["ok"] is True


# --------------------------------------------------------------------- retries


class TestTaskRetry:
    async def test_a_task_that_fails_twice_then_succeeds_is_run_three_times(self) -> None:
        events: list[aioflow.Event] = []
        attempts: list[int] = []

        @aioflow.task(provides="data", retry=aioflow.Retry.times(3))
        async def fetch(context: aioflow.TaskContext) -> str:
            attempts.append(context.attempt)
            if len(attempts) < 3:
                raise ConnectionError("flaky")
            return "payload"

        outcome = await run(Linear("f", fetch), listeners=[events.append])

        assert outcome.status is FlowStatus.SUCCESS
        assert outcome["data"] == "payload"
        assert outcome.atoms["fetch"].attempts == 3
        assert attempts == [1, 2, 3]
        assert atom_states(events, "fetch") == [
            AtomState.RUNNING,
            AtomState.FAILURE,
            AtomState.RETRYING,
            AtomState.RUNNING,
            AtomState.FAILURE,
            AtomState.RETRYING,
            AtomState.RUNNING,
            AtomState.SUCCESS,
        ]

    async def test_only_exceptions_matching_on_are_retried(self) -> None:
        calls: list[int] = []

        @aioflow.task(retry=aioflow.Retry.times(3, on=KeyError))
        async def fetch() -> None:
            calls.append(1)
            raise ValueError("not retryable")

        error = await run_failing(Linear("f", fetch))

        assert len(calls) == 1
        assert error.outcome.atoms["fetch"].attempts == 1
        assert error.failures["fetch"].matches(ValueError)

    async def test_exceptions_matching_on_are_retried(self) -> None:
        calls: list[int] = []

        @aioflow.task(provides="v", retry=aioflow.Retry.times(3, on=(KeyError, OSError)))
        async def fetch() -> int:
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError("an OSError")
            return 1

        outcome = await run(Linear("f", fetch))

        assert outcome.atoms["fetch"].attempts == 3

    async def test_exhausting_the_attempts_fails_the_flow_and_reverts(self) -> None:
        undone: list[str] = []
        calls: list[int] = []

        @aioflow.task(provides="x")
        async def prepare() -> int:
            return 1

        @prepare.revert
        async def unprepare() -> None:
            undone.append("prepare")

        @aioflow.task(retry=aioflow.Retry.times(3))
        async def fetch(x: int) -> None:
            calls.append(x)
            raise ConnectionError(f"attempt {len(calls)}")

        @fetch.revert
        async def unfetch(result: object) -> None:
            assert isinstance(result, aioflow.Failure)
            undone.append(f"fetch: {result.message}")

        error = await run_failing(Linear("f", prepare, fetch))

        assert len(calls) == 3
        assert error.outcome.status is FlowStatus.REVERTED
        assert error.outcome.atoms["fetch"].attempts == 3
        assert error.failures["fetch"].matches(ConnectionError)
        assert undone == ["fetch: attempt 3", "prepare"]

    async def test_the_engine_waits_the_backoff_between_attempts(self) -> None:
        calls: list[float] = []

        @aioflow.task(provides="v", retry=aioflow.Retry.times(2, backoff=0.2))
        async def fetch() -> int:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise ConnectionError("flaky")
            return 1

        await run(Linear("f", fetch))

        assert calls[1] - calls[0] >= 0.19


class TestRetryPolicy:
    def test_without_backoff_there_is_no_delay(self) -> None:
        policy = aioflow.Retry.times(3)

        assert [policy.delay(n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]

    def test_backoff_doubles_from_the_first_attempt(self) -> None:
        policy = aioflow.Retry.times(5, backoff=0.5)

        assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]

    def test_max_backoff_caps_the_delay(self) -> None:
        policy = aioflow.Retry.times(6, backoff=1.0, max_backoff=3.0)

        assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 3.0, 3.0, 3.0]

    def test_jitter_scales_the_delay_into_half_to_whole_of_the_base(self) -> None:
        policy = aioflow.Retry.times(
            8, backoff=1.0, max_backoff=16.0, jitter=True, rng=random.Random(42)
        )
        reference = random.Random(42)

        for attempt in range(1, 8):
            base = min(1.0 * 2 ** (attempt - 1), 16.0)
            delay = policy.delay(attempt)
            assert 0.5 * base <= delay <= base
            assert delay == pytest.approx(base * (0.5 + 0.5 * reference.random()))

    def test_jitter_with_equal_seeds_is_reproducible(self) -> None:
        first = aioflow.Retry.times(5, backoff=2.0, jitter=True, rng=random.Random(7))
        second = aioflow.Retry.times(5, backoff=2.0, jitter=True, rng=random.Random(7))

        assert [first.delay(n) for n in (1, 2, 3)] == [second.delay(n) for n in (1, 2, 3)]

    def test_attempts_counts_every_execution(self) -> None:
        policy = aioflow.Retry.times(3)
        error = RuntimeError()

        assert policy.should_retry(1, error)
        assert policy.should_retry(2, error)
        assert not policy.should_retry(3, error)

    @pytest.mark.parametrize("attempts", [0, -1, 1.5, True])
    def test_attempts_must_be_a_positive_integer(self, attempts: Any) -> None:
        with pytest.raises(ValueError):
            aioflow.Retry.times(attempts)

    def test_negative_backoff_is_refused(self) -> None:
        with pytest.raises(ValueError):
            aioflow.Retry.times(2, backoff=-1)


# --------------------------------------------------------------------- bad definitions


class TestBadDefinitions:
    def test_rebind_naming_an_unknown_parameter_is_refused(self) -> None:
        async def fetch(url: str) -> None:
            pass

        with pytest.raises(ValueError, match="adress"):
            aioflow.task(rebind={"adress": "x"})(fetch)

    def test_inject_naming_an_unknown_parameter_is_refused(self) -> None:
        async def fetch(url: str) -> None:
            pass

        with pytest.raises(ValueError, match="limit"):
            aioflow.task(inject={"limit": 3})(fetch)

    def test_a_subclass_and_using_check_rebind_too(self) -> None:
        with pytest.raises(ValueError, match="nope"):
            Upload(rebind={"nope": "x"})
        with pytest.raises(ValueError, match="nope"):
            Upload().using(inject={"nope": 1})

    def test_a_positional_only_parameter_is_refused(self) -> None:
        async def fetch(url: str, /) -> None:
            pass

        with pytest.raises(TypeError, match="url"):
            aioflow.task(fetch)

    @pytest.mark.parametrize("provides", [5, ("a", 5), {"a": "b"}, {"a", "b"}])
    def test_provides_must_be_a_symbol_or_a_tuple_of_symbols(self, provides: Any) -> None:
        async def fetch() -> None:
            pass

        with pytest.raises(TypeError, match="provides"):
            aioflow.task(provides=provides)(fetch)

    @pytest.mark.parametrize("timeout", [0, -1, -0.5])
    def test_a_non_positive_timeout_is_refused(self, timeout: float) -> None:
        async def fetch() -> None:
            pass

        with pytest.raises(ValueError, match="timeout"):
            aioflow.task(timeout=timeout)(fetch)
        with pytest.raises(ValueError, match="timeout"):
            aioflow.task(fetch).using(timeout=timeout)

    def test_decorating_something_not_callable_is_refused(self) -> None:
        with pytest.raises(TypeError):
            aioflow.task(42)  # type: ignore[call-overload]
        with pytest.raises(TypeError):
            aioflow.task(provides="x")("not a function")  # type: ignore[arg-type]

    def test_a_plain_function_in_a_flow_is_refused_with_a_hint(self) -> None:
        async def fetch() -> None:
            pass

        with pytest.raises(TypeError, match=r"@aioflow\.task"):
            Linear("f", fetch)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"@aioflow\.task"):
            Unordered("u").add(fetch)  # type: ignore[arg-type]


# --------------------------------------------------------------------- Progress


class TestProgress:
    def test_calling_sets_the_fraction_and_details(self) -> None:
        progress = aioflow.Progress()

        progress(0.25, stage="copy")

        assert progress.fraction == 0.25
        assert progress.details == {"stage": "copy"}

    def test_starts_at_zero(self) -> None:
        assert aioflow.Progress().fraction == 0.0

    def test_update_with_a_total_divides(self) -> None:
        progress = aioflow.Progress()

        progress.update(512, total=1024, bytes_done=512)

        assert progress.fraction == 0.5
        assert progress.total == 1024
        assert progress.details == {"bytes_done": 512}

    def test_a_total_set_first_is_used_by_update(self) -> None:
        progress = aioflow.Progress()
        progress.total = 10

        progress.update(3)

        assert progress.fraction == pytest.approx(0.3)

    def test_advance_adds_to_the_count(self) -> None:
        progress = aioflow.Progress()
        progress.total = 4

        progress.advance()
        progress.advance(2)

        assert progress.fraction == 0.75

    @pytest.mark.parametrize(
        ("report", "expected"),
        [
            (lambda p: p(1.5), 1.0),
            (lambda p: p(-0.2), 0.0),
            (lambda p: p.update(2000, total=1024), 1.0),
            (lambda p: p.update(-5, total=10), 0.0),
        ],
    )
    def test_values_are_clamped_to_zero_and_one(self, report: Any, expected: float) -> None:
        progress = aioflow.Progress()

        report(progress)

        assert progress.fraction == expected

    @pytest.mark.parametrize(
        "report",
        [
            lambda p: p(math.nan),
            lambda p: p("half"),
            lambda p: p(None),
            lambda p: p(True),
            lambda p: p.update(math.nan, total=10),
            lambda p: p.update("3", total=10),
            lambda p: p.update(3, total=math.nan),
        ],
    )
    def test_nan_and_non_numbers_are_refused(self, report: Any) -> None:
        progress = aioflow.Progress()

        with pytest.raises(ValueError):
            report(progress)
        assert progress.fraction == 0.0

    def test_update_without_any_total_is_refused(self) -> None:
        progress = aioflow.Progress()

        with pytest.raises(ValueError, match="total"):
            progress.update(3)

    @pytest.mark.parametrize("total", [0, -1])
    def test_a_non_positive_total_is_refused(self, total: int) -> None:
        progress = aioflow.Progress()

        with pytest.raises(ValueError):
            progress.total = total

    def test_details_merge_across_reports(self) -> None:
        progress = aioflow.Progress()

        progress(0.1, stage="copy", files=1)
        progress(0.2, files=2)
        progress(0.3)

        assert progress.details == {"stage": "copy", "files": 2}

    def test_details_is_a_copy(self) -> None:
        progress = aioflow.Progress()
        progress(0.1, stage="copy")

        progress.details["stage"] = "changed"

        assert progress.details == {"stage": "copy"}

    def test_every_report_reaches_the_reporter(self) -> None:
        reports: list[tuple[float, dict[str, Any]]] = []
        progress = aioflow.Progress(lambda fraction, details: reports.append((fraction, details)))

        progress(0.5, stage="a")
        progress(2.0, stage="b")

        assert reports == [(0.5, {"stage": "a"}), (1.0, {"stage": "b"})]


# --------------------------------------------------------------------- Failure


class CustomError(ValueError):
    pass


def captured(exc: BaseException) -> aioflow.Failure:
    try:
        raise exc
    except BaseException as caught:
        return aioflow.Failure.from_exception(caught)


class TestFailure:
    def test_from_exception_keeps_type_message_and_traceback(self) -> None:
        exc = ValueError("bad volume")
        failure = captured(exc)

        assert failure.exc_type == "ValueError"
        assert failure.message == "bad volume"
        assert "ValueError: bad volume" in failure.traceback
        assert "raise exc" in failure.traceback
        assert failure.exception is exc
        assert str(failure) == "ValueError: bad volume"

    def test_matches_checks_the_live_exception(self) -> None:
        failure = captured(CustomError("x"))

        assert failure.matches(CustomError)
        assert failure.matches(ValueError)
        assert failure.matches(Exception)
        assert failure.matches(TypeError, ValueError)
        assert not failure.matches(TypeError)

    def test_matches_works_after_a_round_trip_through_the_journal_form(self) -> None:
        original = captured(CustomError("x"))
        replayed = aioflow.Failure.from_dict(json.loads(json.dumps(original.to_dict())))

        assert replayed.exception is None
        assert replayed == original
        assert replayed.matches(CustomError)
        assert replayed.matches(ValueError)
        assert replayed.matches(Exception)
        assert not replayed.matches(TypeError)
        assert not replayed.matches(RuntimeError, LookupError)

    def test_reraise_of_a_live_failure_raises_the_same_object(self) -> None:
        exc = CustomError("same")
        failure = captured(exc)

        with pytest.raises(CustomError) as info:
            failure.reraise()
        assert info.value is exc

    def test_reraise_after_replay_rebuilds_a_builtin(self) -> None:
        replayed = aioflow.Failure.from_dict(captured(ConnectionError("refused")).to_dict())

        with pytest.raises(ConnectionError, match=r"^refused$") as info:
            replayed.reraise()
        assert type(info.value) is ConnectionError

    def test_reraise_after_replay_of_a_non_builtin_names_the_type(self) -> None:
        replayed = aioflow.Failure.from_dict(captured(CustomError("custom")).to_dict())

        with pytest.raises(aioflow.AioflowError, match="CustomError") as info:
            replayed.reraise()
        assert "custom" in str(info.value)

    def test_a_class_shadowing_a_builtin_name_is_not_rebuilt_as_the_builtin(self) -> None:
        class KeyError(Exception):  # a user's class that happens to share a builtin's name
            pass

        replayed = aioflow.Failure.from_dict(captured(KeyError("mine")).to_dict())

        with pytest.raises(aioflow.AioflowError, match="KeyError"):
            replayed.reraise()
        assert replayed.matches(KeyError)
        assert not replayed.matches(LookupError)
