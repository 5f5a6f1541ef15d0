"""What `make demo` runs: persistence, then a resumable fan-out, on the embedded defaults.

Part 1: a chatbot-style application (a deterministic fake responder, no network) saved to
SQLite and tracked locally: start, stop halfway, resume, fork from an earlier step.
Part 2: a Monte-Carlo sweep over 1,020 option-pricing configurations as one `MapStates`
step, with SQLite and local tracking cascaded to every child and a progress bar.

Press Ctrl-C during the sweep and run the demo again: finished configurations are loaded,
not recomputed. `--fresh` deletes the data folder first; `--data-dir` moves it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

from fanwise.core import Application, ApplicationBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiProcessExecutor
from fanwise.parallel import MapStates, child_app_id

CHAT_PROJECT = "demo-chat"
SWEEP_PROJECT = "demo-sweep"
SWEEP_APP_ID = "option-sweep-v1"
"""Stable, so that a re-run resumes this sweep instead of starting another one."""

PROMPTS = [
    "What is a state machine?",
    "Why persist every step?",
    "How does resuming work?",
    "And what is a fork?",
]
FORK_PROMPT = "Let us talk about fan-out instead."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=".fanwise-demo", help="where SQLite and tracking files go"
    )
    parser.add_argument("--fresh", action="store_true", help="delete the data folder first")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir).resolve()
    if args.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
        print(f"--fresh: deleted {data_dir}")
    data_dir.mkdir(parents=True, exist_ok=True)
    db_path = data_dir / "fanwise.db"
    tracking_dir = data_dir / "tracking"
    print(f"data folder: {data_dir}\n  SQLite: {db_path}\n  tracking: {tracking_dir}")

    persistence_walkthrough(db_path, tracking_dir)
    return parameter_sweep(db_path, tracking_dir)


# -- part 1: persistence -----------------------------------------------------------------


def fake_llm(prompt: str, turn: int) -> str:
    """A deterministic stand-in for a language model."""
    longest = max(prompt.rstrip("?.!").split(), key=len)
    return f"[turn {turn}] {len(prompt.split())} words; the key one is {longest!r}."


@action(reads=[], writes=["chat_history", "prompt"])
def human_input(state: State, prompt: str) -> State:
    return state.update(prompt=prompt).append(chat_history={"role": "user", "content": prompt})


@action(reads=["chat_history", "prompt"], writes=["chat_history", "response"])
def ai_response(state: State) -> State:
    response = fake_llm(state["prompt"], turn=len(state["chat_history"]) // 2 + 1)
    return state.update(response=response).append(
        chat_history={"role": "assistant", "content": response}
    )


def chat_app(db_path: Path, tracking_dir: Path, app_id: str, **fork: object) -> Application:
    """Resume `app_id` from SQLite if it is saved there; else fork (if asked) or start fresh."""
    persister = SQLitePersister(db_path)
    return (
        ApplicationBuilder()
        .with_actions(human_input, ai_response)
        .with_transitions(("human_input", "ai_response"), ("ai_response", "human_input"))
        .initialize_from(
            persister,
            resume_at_next_action=True,
            default_state={"chat_history": []},
            default_entrypoint="human_input",
            **fork,
        )
        .with_state_persister(persister)
        .with_tracker(LocalTrackingClient(CHAT_PROJECT, storage_dir=str(tracking_dir)))
        .with_identifiers(app_id=app_id)
        .build()
    )


def chat(app: Application, prompts: list[str]) -> None:
    for prompt in prompts:
        *_, state = app.run(halt_after=["ai_response"], inputs={"prompt": prompt})
        print(f"  user: {prompt}\n  bot:  {state['response']}   (sequence id {app.sequence_id})")


def persistence_walkthrough(db_path: Path, tracking_dir: Path) -> None:
    print("\n== Part 1: persistence — start, stop halfway, resume, fork ==")
    chat_id = f"chat-{uuid.uuid4().hex[:8]}"

    print(f"\n1. Start app {chat_id} and chat for two turns (each run halts after ai_response):")
    # The chat loops forever: `with` closes the app, releasing its single-runner lease.
    with chat_app(db_path, tracking_dir, chat_id) as app:
        chat(app, PROMPTS[:2])
    print("   ... the process stops here; every step is already in SQLite.")

    with chat_app(db_path, tracking_dir, chat_id) as app:
        print(
            f"\n2. Rebuild {chat_id} with initialize_from(SQLitePersister): last sequence id "
            f"{app.sequence_id}, {len(app.state['chat_history'])} messages, next action "
            f"{app.get_next_action().name!r}. Finish the conversation:"
        )
        chat(app, PROMPTS[2:])

    fork_id = f"{chat_id}-fork"
    with chat_app(
        db_path, tracking_dir, fork_id, fork_from_app_id=chat_id, fork_from_sequence_id=1
    ) as fork:
        print(
            f"\n3. Fork {chat_id} at sequence id 1 (after the first answer) as {fork_id}:\n"
            f"   parent pointer: {fork.parent_pointer}\n"
            f"   {len(fork.state['chat_history'])} messages, next action "
            f"{fork.get_next_action().name!r}; the fork goes its own way:"
        )
        chat(fork, [FORK_PROMPT])

    original = SQLitePersister(db_path).load(None, chat_id)
    print(
        f"\n   The original is untouched: {len(original['state']['chat_history'])} messages, "
        f"last sequence id {original['sequence_id']}."
    )
    metadata = json.loads((tracking_dir / CHAT_PROJECT / fork_id / "metadata.json").read_text())
    print(f"   Tracking records the fork's parent: {metadata['parent_pointer']}")
    print(
        f"   (list the chats: .venv/bin/fanwise apps --project {CHAT_PROJECT} "
        f"--storage-dir {tracking_dir})"
    )


# -- part 2: the fan-out -----------------------------------------------------------------

SPOT, RATE, MATURITY = 100.0, 0.03, 1.0
STRIKES = [80.0, 90.0, 100.0, 110.0, 120.0]
VOLATILITIES = [0.1, 0.2, 0.3, 0.4]
SAMPLE_SIZES = [1_000, 4_000, 16_000]
SEEDS = list(range(17))


def configurations() -> list[dict[str, float | int]]:
    """5 strikes x 4 volatilities x 3 sample sizes x 17 seeds = 1,020 configurations."""
    return [
        {"strike": strike, "vol": vol, "samples": samples, "seed": seed}
        for strike in STRIKES
        for vol in VOLATILITIES
        for samples in SAMPLE_SIZES
        for seed in SEEDS
    ]


@action(reads=["strike", "vol", "samples", "seed"], writes=["price", "stderr"])
def price_option(state: State) -> State:
    """Monte-Carlo price of a European call (antithetic variates), with its standard error."""
    strike, vol, samples = state["strike"], state["vol"], state["samples"]
    rng = random.Random(f"{strike}/{vol}/{samples}/{state['seed']}")
    drift = (RATE - 0.5 * vol * vol) * MATURITY
    diffusion = vol * math.sqrt(MATURITY)
    total = total_sq = 0.0
    pairs = samples // 2
    for _ in range(pairs):
        z = rng.gauss(0.0, 1.0)
        up = max(SPOT * math.exp(drift + diffusion * z) - strike, 0.0)
        down = max(SPOT * math.exp(drift - diffusion * z) - strike, 0.0)
        payoff = 0.5 * (up + down)
        total += payoff
        total_sq += payoff * payoff
    mean = total / pairs
    variance = max(total_sq / pairs - mean * mean, 0.0)
    discount = math.exp(-RATE * MATURITY)
    return state.update(price=discount * mean, stderr=discount * math.sqrt(variance / pairs))


class PriceSweep(MapStates):
    """One child application per configuration; `reduce` collects their prices in order."""

    reads = ["configurations"]
    writes = ["results"]
    progress = True

    def action(self) -> object:
        return price_option

    def states(self, state: State):
        for config in state["configurations"]:
            yield State(config)

    def reduce(self, state: State, states) -> State:
        return state.update(results=[child.get_all() for child in states])


def black_scholes_call(strike: float, vol: float) -> float:
    d1 = (math.log(SPOT / strike) + (RATE + 0.5 * vol * vol) * MATURITY) / (
        vol * math.sqrt(MATURITY)
    )
    d2 = d1 - vol * math.sqrt(MATURITY)
    cdf = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    return SPOT * cdf(d1) - strike * math.exp(-RATE * MATURITY) * cdf(d2)


@action(reads=["results"], writes=["convergence", "pooled"])
def summarize(state: State) -> State:
    """Errors against the closed form, per sample size; pooled estimates per contract."""
    convergence = []
    for samples in SAMPLE_SIZES:
        rows = [r for r in state["results"] if r["samples"] == samples]
        errors = [abs(r["price"] - black_scholes_call(r["strike"], r["vol"])) for r in rows]
        convergence.append(
            {
                "samples": samples,
                "configs": len(rows),
                "mean_abs_error": sum(errors) / len(rows),
                "mean_stderr": sum(r["stderr"] for r in rows) / len(rows),
                "within_2_stderr": sum(e <= 2 * r["stderr"] for e, r in zip(errors, rows))
                / len(rows),
            }
        )
    largest = [r for r in state["results"] if r["samples"] == SAMPLE_SIZES[-1]]
    pooled = []
    for strike in STRIKES:
        for vol in VOLATILITIES:
            prices = [r["price"] for r in largest if r["strike"] == strike and r["vol"] == vol]
            pooled.append(
                {
                    "strike": strike,
                    "vol": vol,
                    "monte_carlo": sum(prices) / len(prices),
                    "black_scholes": black_scholes_call(strike, vol),
                }
            )
    return state.update(convergence=convergence, pooled=pooled)


def sweep_app(db_path: Path, tracking_dir: Path) -> Application:
    persister = SQLitePersister(db_path)
    return (
        ApplicationBuilder()
        .with_actions(sweep=PriceSweep(), summarize=summarize)
        .with_transitions(("sweep", "summarize"))
        .initialize_from(
            persister,
            default_state={"configurations": configurations()},
            default_entrypoint="sweep",
        )
        .with_state_persister(persister)
        .with_tracker(LocalTrackingClient(SWEEP_PROJECT, storage_dir=str(tracking_dir)))
        .with_identifiers(app_id=SWEEP_APP_ID)
        # Worker processes, one per CPU: pure-Python pricing on threads would share one core.
        .with_executor(MultiProcessExecutor)
        .build()
    )


def count_saved_children(persister: SQLitePersister, app: Application) -> int:
    """Children of the coming sweep step already saved as completed.

    Child ids are stable (sha256 of parent app id, the parent's sequence id at the parallel
    step, and the child's position), so they can be computed before the step runs.
    """
    following = app.get_next_action()
    if following is None or following.name != "sweep":
        return 0
    sequence_id = 0 if app.sequence_id is None else app.sequence_id + 1
    ids = [child_app_id(app.uid, sequence_id, i) for i in range(len(configurations()))]
    rows = persister.load_many(app.partition_key, ids)
    return sum(row["status"] == "completed" for row in rows.values())


def parameter_sweep(db_path: Path, tracking_dir: Path) -> int:
    """Run (or resume) the sweep and print its tables; 130 if interrupted with Ctrl-C."""
    total = len(configurations())
    print(f"\n== Part 2: fan-out — Monte-Carlo sweep of {total:,} configurations ==")
    app = sweep_app(db_path, tracking_dir)
    if app.get_next_action() is None:
        print(
            f"\nApp {SWEEP_APP_ID} already finished in an earlier run: nothing to compute "
            f"(pass --fresh to start over). Its saved results:"
        )
    else:
        resumed = count_saved_children(SQLitePersister(db_path), app)
        print(
            f"\nApp {SWEEP_APP_ID}: {resumed:,} configurations already saved, "
            f"{total - resumed:,} to compute (Ctrl-C any time, then re-run to resume)."
        )
        started = time.perf_counter()
        try:
            app.run(halt_after=["summarize"])
        except KeyboardInterrupt:
            saved = count_saved_children(SQLitePersister(db_path), app)
            print(
                f"\nInterrupted. {saved:,} of {total:,} configurations are saved in {db_path}."
                "\nRun the demo again to resume; only the missing ones are computed."
            )
            return 130
        print(
            f"Done in {time.perf_counter() - started:.1f} s: {total - resumed:,} computed, "
            f"{resumed:,} resumed from SQLite."
        )
    print_tables(app.state)
    print(
        f"\nEvery child is a saved application: {total:,} rows in SQLite and one folder each "
        f"in {tracking_dir / SWEEP_PROJECT}."
    )
    return 0


def print_tables(state: State) -> None:
    print("\nConvergence: error of each estimate against the Black-Scholes closed form")
    print(
        f"{'samples':>8} {'configs':>8} {'mean |error|':>13} {'mean stderr':>12} "
        f"{'within 2 stderr':>16}"
    )
    for row in state["convergence"]:
        print(
            f"{row['samples']:>8,} {row['configs']:>8} {row['mean_abs_error']:>13.4f} "
            f"{row['mean_stderr']:>12.4f} {row['within_2_stderr']:>16.1%}"
        )
    print(
        f"\nPooled estimates ({len(SEEDS)} seeds x {SAMPLE_SIZES[-1]:,} samples) "
        "against the closed form"
    )
    print(f"{'strike':>7} {'vol':>5} {'Monte-Carlo':>12} {'Black-Scholes':>14} {'diff':>8}")
    for row in state["pooled"]:
        diff = row["monte_carlo"] - row["black_scholes"]
        print(
            f"{row['strike']:>7.0f} {row['vol']:>5.1f} {row['monte_carlo']:>12.4f} "
            f"{row['black_scholes']:>14.4f} {diff:>+8.4f}"
        )


if __name__ == "__main__":
    sys.exit(main())
