"""The pipeline module the `fanwise run` tests write into their folder and run."""

import textwrap

PIPELINE = textwrap.dedent('''
    import os, time
    from fanwise.core import ApplicationBuilder, State, action
    from fanwise.parallel import MapStates

    @action(reads=["x"], writes=["y"])
    def square(state: State) -> State:
        if os.environ.get("SLOW"):
            time.sleep(float(os.environ["SLOW"]))
        with open(os.environ["RUNS_LOG"], "a") as log:
            log.write(f"{state['x']}\\n")
        if state["x"] % 10 == 7 and os.environ.get("FAIL") == "1":
            raise ValueError(f"x={state['x']} is unlucky")
        return state.update(y=state["x"] ** 2)

    class Squares(MapStates):
        reads = ["n"]
        writes = ["total"]
        on_failure = "continue"
        def action(self): return square
        def states(self, state): return (State({"x": x}) for x in range(state["n"]))
        def reduce(self, state, states): return state.update(total=sum(s["y"] for s in states))

    class FailFastSquares(Squares):
        on_failure = "raise"
        def states(self, state): return [State({"x": x}) for x in range(state["n"])]

    @action(reads=["total"], writes=["report"])
    def report(state: State, scale: int = 1) -> State:
        return state.update(report=state["total"] * scale)

    def build(n: int = 30):
        return (ApplicationBuilder().with_actions(fan=Squares(), report=report)
                .with_transitions(("fan", "report")).with_state(n=n).with_entrypoint("fan"))

    def build_fail_fast(n: int = 30):
        # sized tasks: the fan-out records its total; the first failure starts no more child
        return (ApplicationBuilder().with_actions(fan=FailFastSquares(), report=report)
                .with_transitions(("fan", "report")).with_state(n=n).with_entrypoint("fan"))

    def build_with(app_id, persister):
        # takes what it wires itself: the command adds only the tracker
        return (ApplicationBuilder().with_actions(fan=Squares(), report=report)
                .with_transitions(("fan", "report")).with_identifiers(app_id=app_id)
                .with_state_persister(persister)
                .initialize_from(persister, default_state={"n": 5}, default_entrypoint="fan"))
''')
