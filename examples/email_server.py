"""The web-server tutorial's email assistant, served by `fanwise.server` instead of
hand-written endpoints: a person gives an email and instructions, answers the assistant's
clarifying questions, reviews drafts with feedback until the feedback is empty, and gets the
final draft. The LLM is a deterministic stand-in (`FakeLLM`); the draft streams word by word.

    FANWISE_EMAIL_DB=email.db .venv/bin/python examples/email_server.py   # port 7242
    uvicorn --app-dir examples email_server:app --workers 2               # several workers

Settings (environment): `FANWISE_EMAIL_DB` (SQLite file or postgresql:// DSN, default
`email-server.db`), `FANWISE_EMAIL_TABLE` (the state table, default `email_state`; the
server's tables are named after it), `FANWISE_EMAIL_BUSY` (`reject` or `queue`),
`FANWISE_EMAIL_TOKEN_DELAY` (seconds between streamed words, default 0). A request's
`X-User` header is its partition key: one user's apps are invisible to another.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from fanwise.core import ApplicationBuilder, State, action, expr, streaming_action
from fanwise.core.graph import GraphBuilder
from fanwise.server import create_app, open_store
from fastapi import Request

HALT_BEFORE = ["clarify_instructions", "process_feedback"]
HALT_AFTER = ["final_result"]


class FakeLLM:
    """Answers as a model would, from the prompt alone: questions when the instructions are
    short, a draft that names the email, the answers and the latest feedback."""

    def questions(self, email: str, instructions: str) -> list[str]:
        if len(instructions.split()) >= 8:
            return []
        return ["Who is the email for?", "What tone should it have?"]

    def draft(self, email: str, instructions: str, answers: list[str],
              feedback: str | None) -> Iterator[str]:
        words = ["Dear", "sender,", "about", f"'{email}':", instructions.rstrip(".") + "."]
        if answers:
            words += ["Noting:", "; ".join(answers) + "."]
        if feedback:
            words += ["Revised", "for:", feedback + "."]
        yield from (word + " " for word in words)


LLM = FakeLLM()


@action(reads=[], writes=["incoming_email", "response_instructions"])
def process_input(state: State, email_to_respond: str, response_instructions: str) -> State:
    return state.update(incoming_email=email_to_respond,
                        response_instructions=response_instructions)


@action(reads=["incoming_email", "response_instructions"], writes=["clarification_questions"])
def determine_clarifications(state: State) -> State:
    questions = LLM.questions(state["incoming_email"], state["response_instructions"])
    return state.update(clarification_questions=questions)


@action(reads=["clarification_questions"], writes=["clarification_answers"])
def clarify_instructions(state: State, clarification_inputs: list[str]) -> State:
    return state.update(clarification_answers=list(clarification_inputs))


@streaming_action(
    reads=["incoming_email", "response_instructions", "clarification_answers", "feedback"],
    writes=["current_draft", "draft_history"],
)
def formulate_draft(state: State) -> Iterator[tuple[dict[str, Any], State | None]]:
    """Streams the draft word by word (`{"delta": word}`), then saves it."""
    delay = float(os.environ.get("FANWISE_EMAIL_TOKEN_DELAY", "0"))
    words = []
    for word in LLM.draft(state["incoming_email"], state["response_instructions"],
                          state.get("clarification_answers", []), state.get("feedback")):
        time.sleep(delay)
        words.append(word)
        yield {"delta": word}, None
    draft = "".join(words).strip()
    yield {"current_draft": draft}, state.update(current_draft=draft).append(
        draft_history=draft)


@action(reads=[], writes=["feedback", "feedback_history"])
def process_feedback(state: State, feedback: str) -> State:
    return state.update(feedback=feedback).append(feedback_history=feedback)


@action(reads=["current_draft"], writes=["final_draft"])
def final_result(state: State) -> State:
    return state.update(final_draft=state["current_draft"])


graph = (
    GraphBuilder()
    .with_actions(process_input, determine_clarifications, clarify_instructions,
                  formulate_draft, process_feedback, final_result)
    .with_transitions(
        ("process_input", "determine_clarifications"),
        ("determine_clarifications", "clarify_instructions",
         expr("len(clarification_questions) > 0")),
        ("determine_clarifications", "formulate_draft"),
        ("clarify_instructions", "formulate_draft"),
        ("formulate_draft", "process_feedback"),
        ("process_feedback", "formulate_draft", expr("len(feedback) > 0")),
        ("process_feedback", "final_result"),
    )
    .build()
)


def open_persister(url: str, table: str) -> Any:
    """The store of `FANWISE_EMAIL_DB`: PostgreSQL for a DSN, else a SQLite file."""
    if url.startswith(("postgresql://", "postgres://")):
        from fanwise.core.persistence import PostgreSQLPersister

        return PostgreSQLPersister(url, table_name=table, max_connections=4)
    from fanwise.core.persistence import SQLitePersister

    return SQLitePersister(url, table_name=table)


DB = os.environ.get("FANWISE_EMAIL_DB", "email-server.db")
TABLE = os.environ.get("FANWISE_EMAIL_TABLE", "email_state")
persister = open_persister(DB, TABLE)


def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
    """The tutorial's `_get_application`: the app as saved, or a fresh one."""
    return (
        ApplicationBuilder()
        .with_graph(graph)
        .initialize_from(persister, resume_at_next_action=True,
                         default_state={"draft_history": []},
                         default_entrypoint="process_input")
        .with_state_persister(persister)
        .with_identifiers(app_id=app_id, partition_key=partition_key)
    )


def user(request: Request) -> str | None:
    return request.headers.get("x-user") or None


app = create_app(
    build_app,
    title="Email assistant",
    halt_before=HALT_BEFORE,
    halt_after=HALT_AFTER,
    auth=user,
    busy=os.environ.get("FANWISE_EMAIL_BUSY", "reject"),  # type: ignore[arg-type]
    store=open_store(DB, prefix=f"{TABLE}_server"),
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "7242")))
