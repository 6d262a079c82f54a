"""Compiling a flow tree: every InvalidFlowError it finds before anything runs, how
symbols resolve, the order Graphs impose, deciders, nesting, the fingerprint, and the
size of the graph for large shapes."""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import pytest

import aioflow
from aioflow import AtomState, Checkpoint, FlowStatus, Graph, Linear, Unordered

KW = inspect.Parameter.KEYWORD_ONLY


def step(
    name: str,
    *requires: str,
    provides: str | tuple[str, ...] | None = None,
    optional: tuple[str, ...] = (),
    log: list[str] | None = None,
) -> aioflow.Task:
    """A task called ``name`` that requires ``requires`` (and optionally ``optional``),
    appends its name to ``log`` when it runs, and returns its name."""
    params = [inspect.Parameter(r, KW) for r in requires]
    params += [inspect.Parameter(r, KW, default=None) for r in optional]

    async def work(**kwargs: Any) -> str:
        if log is not None:
            log.append(name)
        return name

    work.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return aioflow.task(name=name, provides=provides)(work)


def invalid(flow: aioflow.Flow, inputs: tuple[str, ...] = ()) -> aioflow.InvalidFlowError:
    with pytest.raises(aioflow.InvalidFlowError) as info:
        aioflow.compile_flow(flow, inputs)
    return info.value


def shows_cycle(message: str, cycle: list[str]) -> bool:
    """True when ``message`` shows ``cycle`` as a closed path, starting anywhere on it."""
    rotations = [cycle[i:] + cycle[:i] for i in range(len(cycle))]
    return any(" -> ".join([*r, r[0]]) in message for r in rotations)


async def run(flow: aioflow.Flow, inputs: dict[str, Any] | None = None) -> aioflow.Outcome:
    return await aioflow.Engine().run(flow, inputs)


# --------------------------------------------------------------------- duplicate names


class TestDuplicateNames:
    def test_a_task_used_twice_without_using_is_refused(self) -> None:
        fetch = step("fetch")

        error = invalid(Linear("f", fetch, step("other"), fetch))

        assert "'fetch'" in str(error)
        assert "using" in str(error)
        assert error.atoms == ("fetch",)

    def test_two_flows_with_one_name_are_refused(self) -> None:
        flow = Linear("root", Linear("sub", step("a")), Unordered("sub", step("b")))

        error = invalid(flow)

        assert "'sub'" in str(error)
        assert error.atoms == ("sub",)

    def test_a_task_named_like_a_flow_is_refused(self) -> None:
        error = invalid(Linear("root", Graph("shared", step("a")), step("shared")))

        assert error.atoms == ("shared",)

    def test_every_duplicate_is_named(self) -> None:
        a, b = step("a"), step("b")

        error = invalid(Linear("f", a, b, Unordered("u", a.using(), b.using())))

        assert error.atoms == ("a", "b")
        assert "'a'" in str(error) and "'b'" in str(error)

    async def test_the_engine_refuses_before_anything_runs(self) -> None:
        log: list[str] = []
        first = step("first", log=log)

        with pytest.raises(aioflow.InvalidFlowError):
            await run(Linear("f", first, step("x", log=log), first))
        assert log == []


# --------------------------------------------------------------------- cycles and links


class TestCyclesAndLinks:
    def test_a_cycle_of_links_is_refused_and_shown(self) -> None:
        a, b, c = step("a"), step("b"), step("c")

        error = invalid(Graph("g", a, b, c).link(a, b).link(b, c).link(c, a))

        assert "cycle" in str(error)
        assert shows_cycle(str(error), ["a", "b", "c"]), str(error)
        assert set(error.atoms) == {"a", "b", "c"}

    def test_a_cycle_through_data_is_refused(self) -> None:
        a = step("a", "y", provides="x")
        b = step("b", "x", provides="y")

        error = invalid(Graph("g", a, b))

        assert "cycle" in str(error)
        assert shows_cycle(str(error), ["a", "b"]), str(error)
        assert set(error.atoms) == {"a", "b"}

    def test_a_cycle_mixing_links_and_data_is_refused(self) -> None:
        a = step("a", provides="x")
        b = step("b", "x")

        error = invalid(Graph("g", a, b).link(b, a))

        assert shows_cycle(str(error), ["a", "b"]), str(error)

    def test_a_self_link_is_refused(self) -> None:
        a = step("a")

        error = invalid(Graph("g", a, step("b")).link(a, a))

        assert "'a'" in str(error)
        assert error.atoms == ("a",)

    def test_a_link_to_a_non_member_is_refused(self) -> None:
        a, outsider = step("a"), step("outsider")

        error = invalid(Graph("g", a).link(a, outsider))

        assert "'outsider'" in str(error)
        assert error.atoms == ("outsider",)

    def test_a_link_from_an_unknown_name_is_refused(self) -> None:
        a = step("a")

        error = invalid(Graph("g", a).link("ghost", a))

        assert error.atoms == ("ghost",)

    async def test_the_engine_refuses_a_cycle_before_anything_runs(self) -> None:
        log: list[str] = []
        a, b, c = step("a", log=log), step("b", log=log), step("c", log=log)

        with pytest.raises(aioflow.InvalidFlowError, match="cycle"):
            await run(Linear("root", c, Graph("g", a, b).link(a, b).link(b, a)))
        assert log == []


# --------------------------------------------------------------------- missing inputs


class TestMissingInputs:
    def test_every_missing_symbol_of_every_atom_is_listed(self) -> None:
        flow = Linear(
            "root",
            step("a", "x", "y"),
            Unordered("fan", step("b", "z"), step("c", "x")),
            Graph("g", step("d", "w")),
        )

        error = invalid(flow)

        assert isinstance(error, aioflow.MissingInputsError)
        assert error.missing == {"a": ("x", "y"), "b": ("z",), "c": ("x",), "d": ("w",)}
        assert error.symbols == ("w", "x", "y", "z")
        assert set(error.atoms) == {"a", "b", "c", "d"}
        for word in ("'a'", "'b'", "'c'", "'d'", "'w'", "'x'", "'y'", "'z'"):
            assert word in str(error)

    def test_missing_inputs_is_an_invalid_flow_error_and_a_value_error(self) -> None:
        assert issubclass(aioflow.MissingInputsError, aioflow.InvalidFlowError)
        with pytest.raises(ValueError):
            aioflow.compile_flow(Linear("f", step("a", "x")))

    def test_inputs_satisfy_requirements(self) -> None:
        flow = Linear("root", step("a", "x", "y"), Unordered("fan", step("b", "z")))

        graph = aioflow.compile_flow(flow, ["x", "y", "z"])

        assert {n.name for n in graph.atoms} == {"a", "b"}

    def test_an_earlier_atom_satisfies_a_requirement(self) -> None:
        aioflow.compile_flow(Linear("f", step("a", provides="x"), step("b", "x")))

    def test_a_later_atom_does_not_satisfy_a_requirement(self) -> None:
        error = invalid(Linear("f", step("b", "x"), step("a", provides="x")))

        assert isinstance(error, aioflow.MissingInputsError)
        assert error.missing == {"b": ("x",)}

    def test_optional_requirements_are_not_counted_as_missing(self) -> None:
        graph = aioflow.compile_flow(Linear("f", step("a", "x", optional=("maybe",))), ["x"])

        assert graph.index["a"] is not None

    async def test_the_engine_refuses_missing_inputs_before_anything_runs(self) -> None:
        log: list[str] = []

        with pytest.raises(aioflow.MissingInputsError) as info:
            await run(Linear("f", step("a", log=log), step("b", "x", log=log)), {"y": 1})
        assert info.value.missing == {"b": ("x",)}
        assert log == []


# --------------------------------------------------------------------- ambiguous providers


class TestAmbiguousProviders:
    def test_two_unordered_members_providing_one_symbol_are_refused(self) -> None:
        error = invalid(Unordered("u", step("a", provides="x"), step("b", provides="x")))

        assert not isinstance(error, aioflow.MissingInputsError)
        assert "'x'" in str(error)
        assert set(error.atoms) == {"a", "b"}
        assert "'a'" in str(error) and "'b'" in str(error)

    def test_two_graph_members_providing_one_symbol_are_refused(self) -> None:
        error = invalid(Graph("g", step("a", provides="x"), step("b", provides=("y", "x"))))

        assert "'x'" in str(error)
        assert set(error.atoms) == {"a", "b"}

    def test_an_unordered_member_needing_its_siblings_symbol_is_refused(self) -> None:
        error = invalid(Unordered("u", step("a", "x"), step("b", provides="x")))

        assert "'x'" in str(error)
        assert set(error.atoms) == {"a", "b"}
        assert "'a'" in str(error) and "'b'" in str(error)

    def test_a_dependency_hidden_in_nested_members_of_an_unordered_is_refused(self) -> None:
        flow = Unordered(
            "u",
            Linear("left", step("a", provides="x")),
            Linear("right", step("b"), step("c", "x")),
        )

        error = invalid(flow)

        assert set(error.atoms) == {"left", "right"}

    def test_a_later_provider_in_a_linear_shadows_an_earlier_one(self) -> None:
        aioflow.compile_flow(Linear("f", step("a", provides="x"), step("b", provides="x")))


class TestSymbolResolution:
    async def test_the_nearest_provider_wins_in_a_linear(self) -> None:
        @aioflow.task(provides="v")
        async def one() -> int:
            return 1

        @aioflow.task(provides="v")
        async def two() -> int:
            return 2

        @aioflow.task(provides="seen")
        async def look(v: int) -> int:
            return v

        flow = Linear(
            "f",
            one,
            look.using(name="after_one", provides="first"),
            two,
            look.using(name="after_two", provides="second"),
        )
        outcome = await run(flow)

        assert outcome["first"] == 1
        assert outcome["second"] == 2
        assert outcome["v"] == 2

    async def test_a_provider_shadows_an_input_of_the_same_symbol(self) -> None:
        @aioflow.task(provides="v")
        async def replace() -> str:
            return "provided"

        @aioflow.task(provides="seen")
        async def look(v: str) -> str:
            return v

        outcome = await run(Linear("f", look.using(name="before"), replace, look), {"v": "input"})

        assert outcome.atoms["before"].result == "input"
        assert outcome["seen"] == "provided"

    async def test_inputs_reach_atoms_deep_in_the_tree(self) -> None:
        @aioflow.task(provides="out")
        async def deep(token: str) -> str:
            return token.upper()

        flow = Linear("root", Unordered("u", Graph("g", Linear("l", deep))))
        outcome = await run(flow, {"token": "abc"})

        assert outcome["out"] == "ABC"


# --------------------------------------------------------------------- graph ordering


class TestGraphOrdering:
    async def test_a_consumer_runs_after_its_provider_even_if_declared_first(self) -> None:
        log: list[str] = []

        @aioflow.task(provides="report")
        async def consumer(data: str) -> str:
            log.append("consumer")
            return f"report of {data}"

        @aioflow.task(provides="data")
        async def provider() -> str:
            await anyio.sleep(0.02)
            log.append("provider")
            return "rows"

        outcome = await run(Graph("g", consumer, provider))

        assert log == ["provider", "consumer"]
        assert outcome["report"] == "report of rows"

    async def test_an_explicit_link_orders_members_without_data(self) -> None:
        log: list[str] = []

        @aioflow.task
        async def slow() -> None:
            log.append("slow start")
            await anyio.sleep(0.05)
            log.append("slow end")

        @aioflow.task
        async def fast() -> None:
            log.append("fast")

        await run(Graph("g", fast, slow).link(slow, fast))

        assert log == ["slow start", "slow end", "fast"]

    async def test_links_may_name_members_by_name(self) -> None:
        log: list[str] = []

        await run(Graph("g", step("b", log=log), step("a", log=log)).link("a", "b"))

        assert log == ["a", "b"]

    def test_link_and_add_chain(self) -> None:
        a, b = step("a"), step("b")
        graph = Graph("g")

        assert graph.add(a, b) is graph
        assert graph.link(a, b) is graph

    async def test_members_without_order_run_concurrently(self) -> None:
        both_running = anyio.Event()
        running: list[str] = []

        def waiter(name: str) -> aioflow.Task:
            @aioflow.task(name=name)
            async def work() -> None:
                running.append(name)
                if len(running) == 2:
                    both_running.set()
                with anyio.fail_after(2):
                    await both_running.wait()

            return work

        outcome = await run(Graph("g", waiter("a"), waiter("b")))

        assert outcome.status is FlowStatus.SUCCESS


# --------------------------------------------------------------------- deciders


class TestDeciders:
    async def test_a_false_decider_ignores_its_target_and_what_depends_on_it(self) -> None:
        log: list[str] = []
        a = step("a", provides="x", log=log)
        b = step("b", provides="y", log=log)
        c = step("c", log=log)
        d = step("d", "y", log=log)
        free = step("free", log=log)
        graph = Graph("g", a, b, c, d, free).link(a, b, decider=lambda results: False).link(b, c)

        outcome = await run(graph)

        assert outcome.status is FlowStatus.SUCCESS
        assert sorted(log) == ["a", "free"]
        assert outcome.atoms["a"].state is AtomState.SUCCESS
        assert outcome.atoms["free"].state is AtomState.SUCCESS
        for name in ("b", "c", "d"):
            assert outcome.atoms[name].state is AtomState.IGNORED

    async def test_ignored_atoms_count_as_finished_for_progress(self) -> None:
        engine = aioflow.Engine()
        a, b = step("a"), step("b")

        outcome = await engine.run(Graph("g", a, b).link(a, b, decider=lambda r: False))
        progress = await engine.progress(outcome.flow_id)

        assert progress.fraction == 1.0

    async def test_a_true_decider_lets_its_target_run(self) -> None:
        log: list[str] = []
        a, b = step("a", log=log), step("b", log=log)

        outcome = await run(Graph("g", a, b).link(a, b, decider=lambda results: True))

        assert log == ["a", "b"]
        assert outcome.atoms["b"].state is AtomState.SUCCESS

    async def test_a_decider_receives_the_results_of_the_targets_upstream_atoms(self) -> None:
        seen: list[dict[str, Any]] = []

        @aioflow.task(provides="count")
        async def count() -> int:
            return 3

        @aioflow.task
        async def label() -> str:
            return "label"

        @aioflow.task
        async def use(count: int) -> None:
            pass

        def decide(results: Any) -> bool:
            seen.append(dict(results))
            return bool(results["count"] > 0)

        graph = Graph("g", count, label, use).link(count, use, decider=decide).link(label, use)
        outcome = await run(graph)

        assert seen == [{"count": 3, "label": "label"}]
        assert outcome.atoms["use"].state is AtomState.SUCCESS

    async def test_a_decider_that_raises_fails_the_flow(self) -> None:
        log: list[str] = []
        undone: list[str] = []

        @aioflow.task(provides="x")
        async def first() -> int:
            return 0

        @first.revert
        async def unfirst() -> None:
            undone.append("first")

        target = step("target", log=log)

        def decide(results: Any) -> bool:
            return 1 / results["first"] > 0

        with pytest.raises(aioflow.FlowFailedError) as info:
            await run(Graph("g", first, target).link(first, target, decider=decide))

        assert log == []
        assert undone == ["first"]
        assert info.value.outcome.status is FlowStatus.REVERTED
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert any(f.matches(ZeroDivisionError) for f in info.value.failures.values())


# --------------------------------------------------------------------- nesting


class TestNesting:
    async def test_a_linear_in_an_unordered_in_a_graph_runs_in_order(self) -> None:
        log: list[str] = []
        start = step("start", provides="seed", log=log)
        a = step("a", "seed", provides="ax", log=log)
        b = step("b", "ax", provides="bx", log=log)
        c = step("c", "seed", provides="cx", log=log)
        end = step("end", "bx", "cx", log=log)
        tail = step("tail", log=log)
        graph = Graph("root", end, Unordered("fan", Linear("chain", a, b), c), start, tail).link(
            end, tail
        )

        outcome = await run(graph)

        assert outcome.status is FlowStatus.SUCCESS
        assert sorted(log) == ["a", "b", "c", "end", "start", "tail"]
        position = {name: log.index(name) for name in log}
        assert position["start"] < position["a"] < position["b"] < position["end"]
        assert position["start"] < position["c"] < position["end"] < position["tail"]

    async def test_a_flow_after_an_unordered_waits_for_all_its_members(self) -> None:
        log: list[str] = []
        flow = Linear(
            "root",
            Unordered("first", step("a", log=log), step("b", log=log)),
            Unordered("second", step("c", log=log), step("d", log=log)),
        )

        await run(flow)

        assert set(log[:2]) == {"a", "b"}
        assert set(log[2:]) == {"c", "d"}


# --------------------------------------------------------------------- stop_at


class TestStopAt:
    async def test_stop_at_a_task_is_refused(self) -> None:
        log: list[str] = []
        flow = Linear("f", step("a", log=log), Checkpoint("cp"), step("b", log=log))

        with pytest.raises(aioflow.InvalidFlowError, match="checkpoint") as info:
            await aioflow.Engine().run(flow, stop_at="a")

        assert info.value.atoms == ("a",)
        assert log == []

    async def test_stop_at_an_unknown_name_is_refused(self) -> None:
        with pytest.raises(aioflow.InvalidFlowError, match="nowhere"):
            await aioflow.Engine().run(Linear("f", step("a")), stop_at="nowhere")

    async def test_stop_at_a_checkpoint_suspends_there(self) -> None:
        log: list[str] = []
        flow = Linear("f", step("a", log=log), Checkpoint("cp"), step("b", log=log))

        outcome = await aioflow.Engine().run(flow, stop_at="cp")

        assert outcome.status is FlowStatus.SUSPENDED
        assert outcome.checkpoint == "cp"
        assert log == ["a"]


# --------------------------------------------------------------------- fingerprint


def pipeline(provides: str = "out", double: bool = True) -> aioflow.Flow:
    if double:

        @aioflow.task(name="work", provides=provides)
        async def work(n: int) -> int:
            return n * 2

    else:

        @aioflow.task(name="work", provides=provides)
        async def work(n: int) -> int:
            return n * 3

    return Linear("root", Unordered("fan", work, step("other")), step("last", provides))


class TestFingerprint:
    def test_equal_flows_have_equal_fingerprints(self) -> None:
        first = aioflow.compile_flow(pipeline(), ["n"])
        second = aioflow.compile_flow(pipeline(), ["n"])

        assert first.fingerprint == second.fingerprint

    def test_changing_what_a_task_provides_changes_the_fingerprint(self) -> None:
        first = aioflow.compile_flow(pipeline(provides="out"), ["n"])
        second = aioflow.compile_flow(pipeline(provides="result"), ["n"])

        assert first.fingerprint != second.fingerprint

    def test_changing_a_tasks_code_keeps_the_fingerprint(self) -> None:
        first = aioflow.compile_flow(pipeline(double=True), ["n"])
        second = aioflow.compile_flow(pipeline(double=False), ["n"])

        assert first.fingerprint == second.fingerprint

    def test_changing_a_requirement_changes_the_fingerprint(self) -> None:
        first = aioflow.compile_flow(Linear("f", step("a", "x")), ["x", "y"])
        second = aioflow.compile_flow(Linear("f", step("a", "y")), ["x", "y"])

        assert first.fingerprint != second.fingerprint

    def test_changing_the_order_of_a_linear_changes_the_fingerprint(self) -> None:
        first = aioflow.compile_flow(Linear("f", step("a"), step("b")))
        second = aioflow.compile_flow(Linear("f", step("b"), step("a")))

        assert first.fingerprint != second.fingerprint


# --------------------------------------------------------------------- large shapes


def edges(graph: aioflow.ExecGraph) -> int:
    return sum(len(n.preds) for n in graph.nodes)


def wide(name: str, size: int) -> Unordered:
    return Unordered(name, *(step(f"{name}-{i}") for i in range(size)))


class TestLargeShapes:
    def test_a_linear_of_twenty_thousand_tasks_compiles(self) -> None:
        graph = aioflow.compile_flow(Linear("long", *(step(f"t{i}") for i in range(20_000))))

        assert len(list(graph.atoms)) == 20_000
        assert edges(graph) == 19_999

    def test_a_linear_of_two_wide_unordered_flows_has_few_edges(self) -> None:
        graph = aioflow.compile_flow(Linear("root", wide("left", 2000), wide("right", 2000)))

        assert len(list(graph.atoms)) == 4000
        assert edges(graph) < 100_000

    def test_a_graph_link_between_two_wide_unordered_flows_has_few_edges(self) -> None:
        left, right = wide("left", 2000), wide("right", 2000)

        graph = aioflow.compile_flow(Graph("root", left, right).link(left, right))

        assert len(list(graph.atoms)) == 4000
        assert edges(graph) < 100_000

    async def test_a_linear_of_two_wide_unordered_flows_runs(self) -> None:
        log: list[str] = []
        left = Unordered("left", *(step(f"l{i}", log=log) for i in range(200)))
        right = Unordered("right", *(step(f"r{i}", log=log) for i in range(200)))

        outcome = await run(Linear("root", left, right))

        assert outcome.status is FlowStatus.SUCCESS
        assert {n[0] for n in log[:200]} == {"l"}
        assert {n[0] for n in log[200:]} == {"r"}


def test_a_flow_with_a_controller_cannot_share_its_name_and_says_why() -> None:
    @aioflow.task
    async def publish() -> None:
        pass

    with pytest.raises(aioflow.InvalidFlowError, match="is itself an atom named like the flow"):
        aioflow.compile_flow(aioflow.Linear("publish", publish, retry=aioflow.Retry.times(2)))
    aioflow.compile_flow(aioflow.Linear("publish", publish))  # without a controller: fine


def test_a_map_is_an_atom_whose_name_no_other_atom_may_take() -> None:
    mapped = aioflow.Map("resize", step("one"), over="images")

    error = invalid(Linear("f", mapped, Unordered("u", step("resize"))), inputs=("images",))

    assert error.atoms == ("resize",)
    # Its member's names are its own: the same task name outside it is fine.
    aioflow.compile_flow(Linear("f", mapped, Unordered("u", step("one"))), inputs=("images",))


def test_a_nested_flow_with_a_deadline_is_an_atom_named_like_it() -> None:
    timed = Linear("fetch", step("a"), timeout=5)

    error = invalid(Unordered("f", timed, Linear("other", step("fetch"))))

    assert error.atoms == ("fetch",)
    assert "is itself an atom named like the flow" in str(error)


def test_the_graph_says_whether_a_task_may_hand_out_a_completion_token() -> None:
    """A run reads the engine's signing secret only when some task may need it: one
    given its ``external`` handle or its ``context``, however deep, a Map's member too."""

    @aioflow.task
    async def hand_off(external: aioflow.External) -> None:
        return None

    @aioflow.task
    async def with_context(context: aioflow.TaskContext) -> None:
        return None

    plain = Unordered("f", step("a"), Linear("l", step("b")))
    assert not aioflow.compile_flow(plain).issues_tokens
    for deep in (
        Unordered("f", step("a"), Linear("l", hand_off)),
        Linear("f", Unordered("u", with_context, step("a"))),
        Linear("f", aioflow.Map("m", Linear("inner", hand_off), over="xs")),
    ):
        assert aioflow.compile_flow(deep, inputs=("xs",)).issues_tokens, deep


def test_the_weights_a_flows_first_event_records_include_a_maps_members() -> None:
    from aioflow._compile import weights_of

    heavy = step("heavy").using(weight=3)
    inner = Linear("inner", step("light"), step("deep").using(weight=0.5))
    assert weights_of(aioflow.compile_flow(Unordered("f", step("a"), step("b")))) == {}
    assert weights_of(aioflow.compile_flow(Unordered("f", step("a"), heavy))) == {"heavy": 3.0}
    mapped = Linear("f", step("a"), aioflow.Map("m", inner, over="xs"))
    assert weights_of(aioflow.compile_flow(mapped, inputs=("xs",))) == {"m[*].deep": 0.5}
