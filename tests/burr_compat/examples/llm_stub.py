"""A stand-in for the `openai` package in Burr's examples: the examples do
`import llm_stub as openai` instead of `import openai` and call it as they call OpenAI.

Answers are canned and depend on the prompt, so that each example's flow takes its
interesting branches (clarifying questions, a chosen mode, a streamed answer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Message:
    content: str


@dataclass
class _Delta:
    content: str | None


@dataclass
class _Choice:
    message: _Message | None = None
    delta: _Delta | None = None


@dataclass
class _Response:
    choices: list[_Choice] = field(default_factory=list)


def answer(messages: list[dict[str, Any]]) -> str:
    """The canned reply to a chat: questions when asked for clarifying questions, a mode
    name when asked to choose one, else a draft or an answer echoing the last message."""
    prompt = messages[-1]["content"]
    if "clarifying questions" in prompt:
        return "Who is the email for?\nWhat tone should it have?"
    if "respond with *only* a single word" in prompt:
        return "answer_question" if "?" in prompt else "generate_poem"
    if "draft response" in prompt:
        return f"Dear sender, about your email: {len(prompt)} characters considered."
    return f"answer to: {prompt}"


def _response(messages: list[dict[str, Any]]) -> _Response:
    return _Response([_Choice(message=_Message(answer(messages)))])


async def _chunks(messages: list[dict[str, Any]]) -> AsyncIterator[_Response]:
    for word in answer(messages).split(" "):
        yield _Response([_Choice(delta=_Delta(word + " "))])
    yield _Response([_Choice(delta=_Delta(None))])


class _Completions:
    def create(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> _Response:
        return _response(messages)


class _AsyncCompletions:
    async def create(self, model: str, messages: list[dict[str, Any]], stream: bool = False,
                     **kwargs: Any) -> Any:
        return _chunks(messages) if stream else _response(messages)


class _Chat:
    def __init__(self, completions: Any) -> None:
        self.completions = completions


class Client:
    """`openai.Client()`."""

    def __init__(self, **kwargs: Any) -> None:
        self.chat = _Chat(_Completions())


class AsyncOpenAI:
    """`openai.AsyncOpenAI()`."""

    def __init__(self, **kwargs: Any) -> None:
        self.chat = _Chat(_AsyncCompletions())
