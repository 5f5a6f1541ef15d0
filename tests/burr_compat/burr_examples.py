"""Run Burr's published examples with only their imports changed (`burr.` -> `fanwise.`).

The examples are in `examples/` next to this file, as Burr 0.43 publishes them; the OpenAI
calls go to `examples/llm_stub.py` (`import llm_stub as openai`). Each example runs in a
process of its own, in a fresh directory that is also its HOME (its `~/.burr` tracking
and `demos.db` land there), and is driven as its `__main__` or its server does; each
driver checks what the example should end with.

    python tests/burr_compat/burr_examples.py          # a table; exit 1 if any failed
    python tests/burr_compat/burr_examples.py --json   # one JSON object per example
    python tests/burr_compat/burr_examples.py --one hello_world_counter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import runpy
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable

EXAMPLES = pathlib.Path(__file__).resolve().parent / "examples"
TIMEOUT_SECONDS = 120


def hello_world_counter() -> str:
    """Its `__main__`: count to 10 with SQLite persistence and tracking, draw the graph;
    then the same app id again, which resumes the finished app."""
    runpy.run_path(str(EXAMPLES / "hello_world_counter.py"), run_name="__main__")
    assert pathlib.Path("statemachine.png").read_bytes()[:4] == b"\x89PNG"
    module = runpy.run_path(str(EXAMPLES / "hello_world_counter.py"))
    app = module["application"](app_id="a7c8e525-58f9-4e84-b4b3-f5b80b5b0d0e")
    assert app.state["counter"] == 10 and app.get_next_action() is None, app.state
    return "counted to 10, png drawn, resumed finished"


def email_assistant_main() -> str:
    """Its application's `__main__`: build from the tracker and draw the graph."""
    runpy.run_path(str(EXAMPLES / "email_assistant.py"), run_name="__main__")
    assert pathlib.Path("statemachine.png").exists()
    return "built from tracker, png drawn"


def email_assistant_server_flow() -> str:
    """Its server's endpoints, called as the web UI calls them: create the draft, answer
    the questions, give feedback once, accept; then a fresh server process (the cache
    cleared) rebuilds the app from the tracking log."""
    server = _import("email_assistant_server")
    project, app_id = "demo_email_assistant", "email-1"
    first = server.initialize_draft(project, app_id, server.DraftInit(
        email_to_respond="Can we meet on Friday?", response_instructions="Say yes"))
    assert first.next_step == "clarify_instructions", first
    answered = server.answer_questions(project, app_id, server.QuestionAnswers(
        answers=["my boss", "friendly"]))
    assert answered.next_step == "process_feedback" and len(answered.drafts) == 1, answered
    revised = server.provide_feedback(project, app_id, server.Feedback(feedback="shorter"))
    assert revised.next_step == "process_feedback" and len(revised.drafts) == 2, revised
    done = server.provide_feedback(project, app_id, server.Feedback(feedback=""))
    assert done.next_step is None and done.final_draft == revised.drafts[-1], done
    server._get_application.cache_clear()
    again = server.get_state(project, app_id)
    assert again.final_draft == done.final_draft and again.next_step is None, again
    return "clarify -> draft -> feedback -> final, resumed from tracking"


def streaming_chatbot_server_flow() -> str:
    """Its server's streaming endpoint, twice (a question, then a poem request), reading
    the server-sent events as the UI does; then the history endpoint."""
    server = _import("streaming_chatbot_server")

    async def converse() -> list[str]:
        replies = []
        for prompt in ("What is the capital of France?", "Write about the sea"):
            response = await server.chat_response(
                "demo_chatbot_streaming", "chat-1", server.PromptInput(prompt=prompt))
            events = [event async for event in response.body_iterator]
            assert events[0].startswith("data: ") and len(events) > 2, events
            replies.append("".join(
                json.loads(e[len("data: "):])["value"] for e in events[1:]))
        return replies

    replies = asyncio.run(converse())
    history = server.chat_history("demo_chatbot_streaming", "chat-1")
    assert [item["role"] for item in history] == ["user", "assistant"] * 2, history
    assert history[1]["content"] == replies[0], (history, replies)
    return f"2 streamed replies ({len(replies[0].split())} and {len(replies[1].split())} words)"


def parallelism_notebook() -> str:
    """The parallelism notebook's code cells as published (approaches 1 to 3)."""
    module = runpy.run_path(str(EXAMPLES / "parallelism_notebook.py"))
    return _check_parallel(module)


def parallelism_notebook_without_otel() -> str:
    """The same cells with `use_otel_tracing=True` taken out (Burr itself needs its
    OpenTelemetry integration installed for it): the parallel part on its own."""
    source = (EXAMPLES / "parallelism_notebook.py").read_text()
    changed = pathlib.Path("parallelism_notebook_without_otel.py")  # in the run's own dir
    changed.write_text(source.replace(", use_otel_tracing=True", ""))
    return _check_parallel(runpy.run_path(str(changed)))


def _check_parallel(module: dict) -> str:
    responses = module["state"]["responses"]
    assert sorted(responses) == ["gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"], responses
    assert all(r.startswith("answer to: what is the meaning") for r in responses.values())
    return "3 approaches, 3 models each (MapStates in parallel)"


def multi_agent_collaboration() -> str:
    """The multi-agent template's `__main__` (build, restart from an unknown app id, draw
    the graph; `view=False` here, as nothing can show it) and six steps of the agents."""
    module = runpy.run_path(str(EXAMPLES / "multi_agent_collaboration.py"))
    app = module["main"]("some user query", "8458dc58-7b6c-430b-9ab3-23450774f883")
    app.visualize(output_file_path="multi_agent_collaboration", include_conditions=True,
                  view=False, format="png")
    assert pathlib.Path("multi_agent_collaboration.png").exists()
    names = [step[0].name for step, _ in zip(app.iterate(halt_after=["terminal"]), range(6))]
    assert names == ["some_agent_1", "tool_node"] * 3, names
    return "built, drawn, agents and tool node take turns"


def _import(name: str) -> object:
    import importlib

    return importlib.import_module(name)


RUNS: dict[str, Callable[[], str]] = {
    run.__name__: run
    for run in (
        hello_world_counter,
        email_assistant_main,
        email_assistant_server_flow,
        streaming_chatbot_server_flow,
        parallelism_notebook,
        parallelism_notebook_without_otel,
        multi_agent_collaboration,
    )
}


def run_one(name: str) -> dict[str, str]:
    """Run one example here (in this process and directory); never raises."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return {"example": name, "status": "ok", "detail": RUNS[name]()}
    except BaseException as exc:  # the report says what broke
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"{pathlib.Path(f.filename).name}:{f.lineno}" for f in reversed(frames)
                      if str(EXAMPLES) in f.filename), "")
        return {"example": name, "status": "failed",
                "detail": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "where": where}


def run_isolated(name: str) -> dict[str, str]:
    """Run one example in a fresh process whose working directory and HOME are new."""
    with tempfile.TemporaryDirectory(prefix=f"burr-example-{name}-") as home:
        env = {**os.environ, "HOME": home, "MPLBACKEND": "Agg"}
        done = subprocess.run(
            [sys.executable, __file__, "--one", name, "--json"], cwd=home, env=env,
            capture_output=True, text=True, timeout=TIMEOUT_SECONDS,
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"example": name, "status": "failed",
                "detail": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=sorted(RUNS), help="run this example here")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args(argv)
    if args.one:
        results = [run_one(args.one)]
    else:
        results = [run_isolated(name) for name in RUNS]
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            where = f" ({result['where']})" if result.get("where") else ""
            print(f"{result['example']:<36} {result['status']:<7} {result['detail']}{where}")
    if not args.json and not args.one:
        ok = sum(r["status"] == "ok" for r in results)
        print(f"\n{ok} of {len(results)} run with only the imports changed")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
