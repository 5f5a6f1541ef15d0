# The code cells of Burr's examples/parallelism/notebook.ipynb, approaches 1 to 3
# (apache-burr 0.43, Apache License 2.0): imports changed from burr.* to fanwise.* and
# `import openai` to the stub; the notebook-only cells (IPython display, UI iframes,
# OpenTelemetry instrumentation of openai) are left out. Nothing else is changed.

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Generator, List, Dict, Any

import pprint
import llm_stub as openai

# burr imports
from fanwise.core import action, State, ApplicationBuilder, ApplicationContext, Action
from fanwise.parallel import MapStates, RunnableGraph


def _query_llm(model: str, prompt: str) -> str:
    """Simple function to query our LLM -- we use OpenAI here / swap for your favorite model"""
    client = openai.Client()
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}]
    )
    return response.choices[0].message.content


@action(reads=[], writes=["prompt", "models"])
def process_input(state: State, prompt: str, models: List[str]) -> State:
    """First Action (node) in our graph -- will take the prompt input and write to state"""
    return state.update(prompt=prompt, models=models)


@action(reads=["responses", "models"], writes=["all_responses"])
def join_outputs(state: State) -> State:
    """Final action (node), just joins in a dictionary"""
    joined_results = {}
    for response, model in zip(state["responses"], state["models"]):
        joined_results[model] = response
    return state.update(all_responses=joined_results)


# Approach #1 -- doing this manually

@action(reads=["models", "prompt"], writes=["responses"])
def query_multiple_models(state: State) -> State:
    """Query multiple models in parallel and store the results in the state."""
    models: List[str] = state["models"]
    prompt: str = state["prompt"]

    def query_model(model: str) -> str:
        return _query_llm(model, prompt)

    with ThreadPoolExecutor() as executor:
        futures = {executor.submit(query_model, model): model for model in models}
        results = {}
        for future in futures:
            model = futures[future]
            results[model] = future.result()

    return state.update(responses=results)

app = (
    ApplicationBuilder()
    .with_actions(
        process_input, # define in fircell above
        query_multiple_models,
        join_outputs
    ).with_entrypoint("process_input")
    .with_tracker(project="parallelism_example", use_otel_tracing=True)
    .with_transitions(
        ("process_input", "query_multiple_models"),
        ("query_multiple_models", "join_outputs")
    )
    .build()
)
app

# let's run the application
action_, _, state = app.run(
    inputs={"prompt": "what is the meaning of life?", "models" : ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"]},
    halt_after=["join_outputs"]
)

# Approach #2 -- using Burr within Burr, i.e. recursion/hierarchy

@action(reads=["model", "prompt"], writes=["response"])
def inner_query_model(state: State) -> State:
    return state.update(response=_query_llm(state["model"], state["prompt"]))

@action(reads=["models", "prompt"], writes=["responses"])
def query_multiple_models(state: State, __context: ApplicationContext) -> State:
    """Query multiple models in parallel and store the results in the state."""
    apps = []
    for model in state["models"]:
        sub_app = (# it's just a single action here, but it could be more!
            ApplicationBuilder()
                .with_actions(query_model=inner_query_model)
                .with_state(model=model, prompt=state["prompt"])
                .with_tracker(project="parallelism_example", use_otel_tracing=True)
                .with_spawning_parent(# we link the parent and subapplication together
                    app_id=__context.app_id,
                    sequence_id=__context.sequence_id
                )
                .with_entrypoint("query_model")
                .build()
        )
        apps.append((model, sub_app))

    with ThreadPoolExecutor() as executor:
        futures = {executor.submit(app.run, halt_after=["query_model"]): model for model, app in apps}
        results = {}
        for future in futures:
            model = futures[future]
            results[model] = future.result()

    return state.update(responses=results)

app_recursion = (
    ApplicationBuilder()
    .with_actions(
        process_input,
        query_multiple_models,
        join_outputs
    ).with_entrypoint("process_input")
    .with_tracker(project="parallelism_example", use_otel_tracing=True)
    .with_transitions(
        ("process_input", "query_multiple_models"),
        ("query_multiple_models", "join_outputs")
    )
    .build()
)
app_recursion

# let's run the application
action_, _, state = app_recursion.run(
    inputs={"prompt": "what is the meaning of life?", "models" : ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"]},
    halt_after=["join_outputs"]
)

# Approach #3 -- using Burr's Parallel constructs

@action(reads=["model", "prompt"], writes=["response"])
def inner_query_model(state: State) -> State:
    return state.update(response=_query_llm(state["model"], state["prompt"]))

class RunOverMultiplePromptsAction(MapStates):
    """Our parallel action - defined as a class."""
    def states(
        self, state: State, inputs: Dict[str, Any], context: ApplicationContext
    ) -> Generator[State, None, None]:
        """Generator to map over values in state"""
        for model in state["models"]:
            yield state.update(model=model)

    def action(self, state: State, inputs: Dict[str, Any]) -> Action:
        """The single action we want to map over"""
        return inner_query_model

    def reduce(self, state: State, results: Generator[State, None, None]) -> State:
        """The reduction step - allows us to customize how state is updated"""
        responses = {
            model: output_state["response"]
            for model, output_state in zip(state["models"], results)
        }
        return state.update(responses=responses)

    @property
    def reads(self) -> List[str]:
        """Like the function @action we need to specify what is read from state"""
        return ["models", "prompt"]

    @property
    def writes(self) -> List[str]:
        """Like the function @action we need to specify what is written to state"""
        return ["responses"]

app_parallelism = (
    ApplicationBuilder()
    .with_actions(
        process_input,
        join_outputs,
        query_multiple_models=RunOverMultiplePromptsAction(),
    ).with_entrypoint("process_input")
    .with_tracker(project="parallelism_example", use_otel_tracing=True)
    .with_transitions(
        ("process_input", "query_multiple_models"),
        ("query_multiple_models", "join_outputs")
    )
    .build()
)
app_parallelism

# let's run the application
action_, _, state = app_parallelism.run(
    inputs={"prompt": "what is the meaning of life?", "models" : ["gpt-4", "gpt-4-turbo", "gpt-3.5-turbo"]},
    halt_after=["join_outputs"]
)
