"""A map-reduce LLM sweep, offline: prompts x models x temperatures against an
OpenAI-compatible endpoint this script starts on 127.0.0.1 (seeded latency, 429s with
Retry-After, a few 5xx, token usage), driven through the real `openai` client, each answer
scored locally by a real model (all-MiniLM-L6-v2, int8 ONNX) against its reference.

    make llm-demo                      # or: .venv/bin/python examples/llm_sweep.py
    .venv/bin/python examples/llm_sweep.py --app-id sweep-1      # run again: resumes
    .venv/bin/python examples/llm_sweep.py --app-id sweep-2      # new run: cache hits

What it shows: the budget keeping the endpoint's limit (no 429 with the budget on), API
errors retried with their waits recorded, a second experiment over the same calls paid
from the cache, Ctrl-C and a re-run that resumes (finished children are not called
again), and the results table with the usage summary.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import socket
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fanwise.core import ApplicationBuilder, Result, State, action  # noqa: E402
from fanwise.core.persistence import SQLitePersister  # noqa: E402
from fanwise.core.tracking import LocalTrackingClient  # noqa: E402
from fanwise.core.tracking.index import RunIndex  # noqa: E402
from fanwise.executors import MultiThreadedExecutor  # noqa: E402
from fanwise.llm import (  # noqa: E402
    Attempts,
    Budget,
    CallCache,
    Results,
    Usage,
    call_with_retries,
    summarize,
)
from fanwise.parallel import MapStates  # noqa: E402

from examples.llm.fake_openai import create_app  # noqa: E402
from examples.llm.scorer import similarity  # noqa: E402

PROMPTS = {
    "What is the capital of France?": "Paris is the capital of France.",
    "At what temperature does water boil?": "Water boils at 100 degrees Celsius.",
    "Which planet is the largest?": "Jupiter is the largest planet.",
    "Who is the author of Hamlet?": "William Shakespeare wrote Hamlet.",
}
MODELS = ["fake-good", "fake-fast", "fake-cheap"]
TEMPERATURES = [0.0, 0.3, 0.7, 1.0]
PRICE_PER_TOKEN = {"fake-good": 3e-6, "fake-fast": 1e-6, "fake-cheap": 5e-7}


@functools.lru_cache(maxsize=4)
def _client(base_url: str) -> Any:
    import openai

    # retries are fanwise's (Retry-After honoured, every wait recorded), not the SDK's
    return openai.OpenAI(base_url=base_url, api_key="offline", max_retries=0, timeout=10)


@action(reads=["prompt", "reference", "model", "temperature"], writes=["answer", "score"])
def ask(state: State, budget: Budget, cache: CallCache, base_url: str, __tracer) -> State:
    request = {
        "model": state["model"],
        "messages": [{"role": "user", "content": state["prompt"]}],
        "temperature": state["temperature"],
    }
    record = Attempts()

    def call() -> dict[str, Any]:
        with budget.acquire(tokens=40) as grant:
            response = _client(base_url).chat.completions.create(**request)
            grant.settle(response.usage.total_tokens)
        return response.model_dump()

    started = time.perf_counter()
    answer, hit = cache.call(request, lambda: call_with_retries(
        call, record=record, initial_wait=0.05, max_wait=2.0))
    latency = time.perf_counter() - started
    text = answer["choices"][0]["message"]["content"]
    usage = answer["usage"]
    Usage(
        prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
        cost=0.0 if hit else usage["total_tokens"] * PRICE_PER_TOKEN[state["model"]],
        latency_s=latency, calls=1, cache_hits=int(hit), retries=record.retries,
    ).log(__tracer)
    return state.update(answer=text, score=round(similarity(text, state["reference"]), 4))


class Sweep(MapStates):
    """Every prompt x model x temperature; the reduce keeps the best model's mean score."""

    reads = ["prompts", "models", "temperatures"]
    writes = ["children", "mean_score_by_model", "failed"]
    max_concurrency = 16
    on_failure = "continue"
    failures_field = "failed"
    resource_inputs = ["budget", "cache", "base_url"]

    def action(self) -> Any:
        return ask

    def states(self, state: State) -> Any:
        for prompt, model, temperature in itertools.product(
            state["prompts"], state["models"], state["temperatures"]
        ):
            yield State({"prompt": prompt, "reference": PROMPTS[prompt], "model": model,
                         "temperature": temperature})

    def reduce(self, state: State, states: Any) -> State:
        scores: dict[str, list[float]] = {}
        count = 0
        for child in states:
            count += 1
            scores.setdefault(child["model"], []).append(child["score"])
        means = {model: round(sum(s) / len(s), 3) for model, s in sorted(scores.items())}
        return state.update(children=count, mean_score_by_model=means)


def build(app_id: str, store: str, tracking: str, prompts: list[str], models: list[str],
          temperatures: list[float]) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(sweep=Sweep(), report=Result("children", "mean_score_by_model"))
        .with_transitions(("sweep", "report"))
        .with_state(prompts=prompts, models=models, temperatures=temperatures)
        .with_entrypoint("sweep")
        .with_state_persister(SQLitePersister(store))
        .with_tracker(LocalTrackingClient("llm-sweep", tracking))
        .with_identifiers(app_id=app_id)
    )


def _serve(rps: int) -> tuple[str, Any]:
    """The fake endpoint on a free loopback port, in a thread; (base URL, its app)."""
    import uvicorn

    app = create_app(rps=rps)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}/v1", app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-id", default="sweep-1")
    parser.add_argument("--folder", default=".fanwise/llm-sweep",
                        help="where the store, the budget, the cache and tracking live")
    parser.add_argument("--rps", type=int, default=40, help="the endpoint's limit per second")
    parser.add_argument("--no-budget", action="store_true",
                        help="no budget: see the endpoint's 429s, retried")
    parser.add_argument("--quick", action="store_true", help="2 prompts x 2 models x 2 temps")
    args = parser.parse_args(argv)
    os.makedirs(args.folder, exist_ok=True)
    store = os.path.join(args.folder, "state.sqlite")
    tracking = os.path.join(args.folder, "tracking")
    prompts, models, temperatures = list(PROMPTS), MODELS, TEMPERATURES
    if args.quick:
        prompts, models, temperatures = prompts[:2], models[:2], temperatures[1:3]

    base_url, endpoint = _serve(args.rps)
    # 90% of the endpoint's limit, shared by every child (a SQLite budget: processes too)
    budget = Budget(requests_per_minute=(10**9 if args.no_budget else args.rps * 54),
                    store=os.path.join(args.folder, "budget.sqlite"), burst_seconds=0.1)
    cache = CallCache(store)
    started = time.perf_counter()
    with MultiThreadedExecutor(16) as executor:
        app = build(args.app_id, store, tracking, prompts, models, temperatures) \
            .with_executor(executor).build()
        _, _, state = app.run(halt_after=["report"],
                              inputs={"budget": budget, "cache": cache, "base_url": base_url})
        app.close()
    seconds = time.perf_counter() - started
    stats = endpoint.state.stats
    print(f"app {args.app_id}: {state['children']} children in {seconds:.1f} s; endpoint: "
          f"{stats['calls']} calls, {stats['rate_limited']} rate-limited (429), "
          f"{stats['server_errors']} server errors (5xx); cache: {cache.hits} hits, "
          f"{cache.misses} misses")
    if state.get("failed"):
        print(f"failed children: {len(state['failed'])} (re-run the same app id to retry "
              "only them)")
    print("mean score by model:", state["mean_score_by_model"])
    index = RunIndex.open("llm-sweep", tracking)
    summary = summarize(index, args.app_id)
    print(f"usage: {summary.totals.get('prompt_tokens', 0):.0f} tokens in, "
          f"{summary.totals.get('completion_tokens', 0):.0f} out, cost "
          f"${summary.totals.get('cost', 0):.6f}, latency p50 {summary.latency_p50 or 0:.3f} s "
          f"p95 {summary.latency_p95 or 0:.3f} s, cache-hit rate "
          f"{summary.cache_hit_rate or 0:.0%}")
    results = Results.of(SQLitePersister(store), args.app_id, 0,
                         fields=["model", "temperature", "score"], index=index)
    best = sorted(results.rows, key=lambda row: -(row["score"] or 0))[:3]
    print("best rows:", [(r["model"], r["temperature"], r["score"]) for r in best])
    return 0


if __name__ == "__main__":
    sys.exit(main())
