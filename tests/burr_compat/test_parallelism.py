"""Burr's parallelism API (`burr.core.parallelism` -> `fanwise.parallel`): `reduce` called
by position, `RunnableGraph.create`, `SubgraphType`, `map_reduce_action`, and the
application's `with_parallel_executor(factory)`."""

import asyncio
import threading
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fanwise.core import ApplicationBuilder, ApplicationContext, GraphBuilder, State, action
from fanwise.parallel import (
    MapStates,
    RunnableGraph,
    SubGraphTask,
    SubgraphType,
    TaskBasedParallelAction,
    map_reduce_action,
)


@action(reads=["prompt"], writes=["llm_output"])
def query_llm(state: State, model: str = "default") -> State:
    return state.update(llm_output=f"{model}:{state['prompt'].upper()}")


class MultiplePrompts(MapStates):
    """As Burr's MapStates docs write it: `reduce(self, state, results)`."""

    def action(self, state: State, inputs: dict[str, Any]) -> SubgraphType:
        return query_llm.with_name("query_llm")

    def states(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> Generator[State, None, None]:
        for prompt in state["prompts"]:
            yield state.update(prompt=prompt)

    def reduce(self, state: State, results: Generator[State, None, None]) -> State:
        return state.update(all_llm_outputs=[r["llm_output"] for r in results])

    @property
    def reads(self) -> list[str]:
        return ["prompts"]

    @property
    def writes(self) -> list[str]:
        return ["all_llm_outputs"]


def run_one(parallel, builder=None, **state):
    app = (
        (builder or ApplicationBuilder())
        .with_actions(fan=parallel)
        .with_state(**state)
        .with_entrypoint("fan")
        .build()
    )
    return app.run(halt_after=["fan"])[2]


def test_reduce_gets_state_and_results_by_position_whatever_their_names():
    final = run_one(MultiplePrompts(), prompts=["a", "b", "c"])
    assert final["all_llm_outputs"] == ["default:A", "default:B", "default:C"]


def test_reduce_with_other_parameter_names_is_called_by_position():
    class Renamed(MultiplePrompts):
        def reduce(self, before, children):
            return before.update(all_llm_outputs=len(list(children)))

    assert run_one(Renamed(), prompts=["a", "b"])["all_llm_outputs"] == 2


def test_reduce_may_still_ask_for_outcomes_by_name():
    class WithOutcomes(MultiplePrompts):
        def reduce(self, state, results, outcomes):
            outputs = [r["llm_output"] for r in results]
            return state.update(all_llm_outputs=[(o.position, o.status) for o in outcomes]
                                + outputs)

    final = run_one(WithOutcomes(), prompts=["x"])
    assert final["all_llm_outputs"] == [(0, "done"), "default:X"]


def test_task_based_parallel_action_as_burr_docs_write_it():
    class MultipleTaskExample(TaskBasedParallelAction):
        def tasks(self, state, context, inputs):
            for prompt in state["prompts"]:
                for model in ["gpt-4", "o1"]:
                    yield SubGraphTask(
                        action=query_llm.bind(model=model).with_name(f"{model}_answer"),
                        state=state.update(prompt=prompt),
                        inputs={},
                        application_id=f"{context.app_id}-{model}-{prompt}",
                    )

        def reduce(self, state, states):
            return state.update(all_llm_outputs=[s["llm_output"] for s in states])

        @property
        def reads(self):
            return ["prompts"]

        @property
        def writes(self):
            return ["all_llm_outputs"]

    final = run_one(MultipleTaskExample(), prompts=["p", "q"])
    assert final["all_llm_outputs"] == ["gpt-4:P", "o1:P", "gpt-4:Q", "o1:Q"]


def test_runnable_graph_create_wraps_an_action_into_a_one_node_graph():
    runnable = RunnableGraph.create(query_llm.with_name("ask"))
    assert [a.name for a in runnable.graph.actions] == ["ask"]
    assert (runnable.entrypoint, list(runnable.halt_after)) == ("ask", ["ask"])
    assert RunnableGraph.create(runnable) is runnable


def test_runnable_graph_create_takes_an_undecorated_name_from_the_function():
    assert RunnableGraph.create(query_llm).entrypoint == "query_llm"


def test_subgraph_type_covers_actions_functions_and_graphs():
    graph = GraphBuilder().with_actions(query_llm).build()
    for item in (query_llm, query_llm.with_name("x"), RunnableGraph(graph, "query_llm", [])):
        assert isinstance(item, SubgraphType)
    assert not isinstance(3, SubgraphType)


def prompts_states(state, context, inputs):
    for prompt in state["prompts"]:
        yield state.update(prompt=prompt)


def collect(state, states):
    return state.update(all_llm_outputs=[s["llm_output"] for s in states])


@pytest.mark.parametrize(
    "action_arg",
    [query_llm, [query_llm], lambda state, context, inputs: (a for a in [query_llm])],
    ids=["action", "list", "generator"],
)
def test_map_reduce_action_maps_the_action_over_the_states(action_arg):
    fan = map_reduce_action(
        action=action_arg, state=prompts_states, reducer=collect,
        reads=["prompts"], writes=["all_llm_outputs"], inputs=[],
    )
    assert run_one(fan, prompts=["a", "b"])["all_llm_outputs"] == ["default:A", "default:B"]


def test_map_reduce_action_crosses_several_actions_with_the_states():
    fan = map_reduce_action(
        action=[query_llm.bind(model="m1").with_name("m1"),
                query_llm.bind(model="m2").with_name("m2")],
        state=lambda state, context, inputs: [state.update(prompt=p) for p in state["prompts"]],
        reducer=collect, reads=["prompts"], writes=["all_llm_outputs"], inputs=[],
    )
    final = run_one(fan, prompts=["a", "b"])
    assert final["all_llm_outputs"] == ["m1:A", "m1:B", "m2:A", "m2:B"]


def test_map_reduce_action_with_a_single_state_runs_one_child():
    fan = map_reduce_action(
        action=query_llm, state=lambda state, context, inputs: state.update(prompt="one"),
        reducer=collect, reads=[], writes=["all_llm_outputs"], inputs=[],
    )
    assert run_one(fan)["all_llm_outputs"] == ["default:ONE"]


def test_map_reduce_action_with_an_async_reducer_runs_under_arun():
    async def acollect(state, states):
        return state.update(all_llm_outputs=[s["llm_output"] async for s in states])

    fan = map_reduce_action(
        action=query_llm, state=prompts_states, reducer=acollect,
        reads=["prompts"], writes=["all_llm_outputs"], inputs=[],
    )
    app = (
        ApplicationBuilder().with_actions(fan=fan).with_state(prompts=["x", "y"])
        .with_entrypoint("fan").build()
    )
    final = asyncio.run(app.arun(halt_after=["fan"]))[2]
    assert final["all_llm_outputs"] == ["default:X", "default:Y"]


# -- with_parallel_executor ------------------------------------------------------------


@action(reads=["prompt"], writes=["llm_output"])
def which_thread(state: State) -> State:
    return state.update(llm_output=threading.current_thread().name)


def test_with_parallel_executor_runs_the_children_on_a_fresh_executor_from_the_factory():
    made = []

    def factory():
        made.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="burr-pool"))
        return made[-1]

    fan = map_reduce_action(
        action=which_thread, state=prompts_states, reducer=collect,
        reads=["prompts"], writes=["all_llm_outputs"], inputs=[],
    )
    builder = ApplicationBuilder().with_parallel_executor(factory)
    final = run_one(fan, builder, prompts=["a", "b", "c"])
    assert all(name.startswith("burr-pool") for name in final["all_llm_outputs"])
    assert len(made) == 1
    with pytest.raises(RuntimeError, match="shutdown"):  # the fan-out shut its executor down
        made[0].submit(print)


def test_with_parallel_executor_may_be_set_once():
    builder = ApplicationBuilder().with_parallel_executor(ThreadPoolExecutor)
    with pytest.raises(ValueError, match="already set"):
        builder.with_parallel_executor(ThreadPoolExecutor)


def test_with_executor_still_takes_an_instance():
    fan = map_reduce_action(
        action=which_thread, state=prompts_states, reducer=collect,
        reads=["prompts"], writes=["all_llm_outputs"], inputs=[],
    )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mine") as pool:
        final = run_one(fan, ApplicationBuilder().with_executor(pool), prompts=["a"])
        assert pool.submit(len, "ab").result() == 2  # an instance stays the caller's
    assert final["all_llm_outputs"][0].startswith("mine")


@action(reads=["prompts"], writes=["all_llm_outputs"])
def by_hand(state: State, __context: ApplicationContext) -> State:
    """Burr's recursion pattern: sub-applications run on the context's executor factory."""
    with __context.parallel_executor_factory() as pool:
        names = list(pool.map(lambda _: threading.current_thread().name, state["prompts"]))
    return state.update(all_llm_outputs=names)


def test_context_parallel_executor_factory_makes_the_apps_executor():
    def factory():
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="from-factory")

    final = run_one(by_hand, ApplicationBuilder().with_parallel_executor(factory),
                    prompts=["a", "b"])
    assert all(name.startswith("from-factory") for name in final["all_llm_outputs"])


def test_context_parallel_executor_factory_defaults_to_threads():
    final = run_one(by_hand, prompts=["a"])
    assert final["all_llm_outputs"][0] != threading.current_thread().name


def test_plan_methods_with_other_parameter_names_get_burrs_arguments_by_position():
    class Renamed(MapStates):
        reads = ["prompts"]
        writes = ["all_llm_outputs"]

        def action(self, s, inp):
            assert isinstance(s, State) and inp == {"model": "m"}
            return query_llm

        def states(self, s, ctx, inp):
            assert ctx.action_name == "fan" and inp == {"model": "m"}
            for prompt in s["prompts"]:
                yield s.update(prompt=prompt)

        def reduce(self, s, results):
            return s.update(all_llm_outputs=[r["llm_output"] for r in results])

    app = (ApplicationBuilder().with_actions(fan=Renamed()).with_state(prompts=["a"])
           .with_entrypoint("fan").build())
    final = app.run(halt_after=["fan"], inputs={"model": "m"})[2]
    assert final["all_llm_outputs"] == ["m:A"]


def test_a_plan_method_with_an_unknown_name_and_another_arity_is_a_build_time_error():
    class Wrong(MultiplePrompts):
        def states(self, state, items):
            return []

    with pytest.raises(ValueError, match="'items'.*by position"):
        ApplicationBuilder().with_actions(fan=Wrong()).with_entrypoint("fan").build()


def test_inputs_listing_the_injected_context_as_burrs_docs_suggest_are_accepted():
    class WithInputs(MultiplePrompts):
        def action(self, state, inputs):
            return query_llm.bind(model=inputs["model"])

        @property
        def inputs(self):
            return ["__context", "model"]

    app = (ApplicationBuilder().with_actions(fan=WithInputs()).with_state(prompts=["a"])
           .with_entrypoint("fan").build())
    assert app.run(halt_after=["fan"], inputs={"model": "m"})[2]["all_llm_outputs"] == ["m:A"]
    with pytest.raises(ValueError, match=r"needs input\(s\) \['model'\]"):
        app.reset_to_entrypoint()
        app.run(halt_after=["fan"])
