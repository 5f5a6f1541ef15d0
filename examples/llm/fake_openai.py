"""An OpenAI-compatible chat endpoint for offline experiments: seeded latency, 429s with
`Retry-After` above its own rate limit (`rps` calls in any second), a few 5xx, and token
usage in every answer.

    python -m examples.llm.fake_openai --port 8765 --rps 50
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def create_app(rps: int = 50, error_rate: float = 0.03, seed: int = 7,
               latency: tuple[float, float] = (0.02, 0.08)) -> FastAPI:
    """The fake API; `app.state.stats` counts calls, 429s and 5xx answers."""
    app = FastAPI(title="fake OpenAI-compatible chat API")
    lock = threading.Lock()
    window: list[float] = []
    stats = {"calls": 0, "rate_limited": 0, "server_errors": 0, "answered": 0}
    app.state.stats = stats

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        prompt = " ".join(m.get("content", "") for m in body.get("messages", []))
        key = f"{body.get('model')}|{body.get('temperature')}|{prompt}"
        rng = random.Random(f"{seed}|{key}|{stats['calls']}")
        now = time.monotonic()
        with lock:
            stats["calls"] += 1
            while window and window[0] < now - 1:
                window.pop(0)
            if len(window) >= rps:
                stats["rate_limited"] += 1
                retry = max(0.0, window[0] + 1 - now)
                return JSONResponse({"error": {"message": "rate limit", "type": "rate_limit"}},
                                    status_code=429, headers={"Retry-After": f"{retry:.3f}"})
            window.append(now)
        await asyncio.sleep(rng.uniform(*latency))
        if rng.random() < error_rate:
            with lock:
                stats["server_errors"] += 1
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        answer = _answer(prompt, body.get("model", ""), body.get("temperature", 0))
        tokens_in, tokens_out = len(prompt.split()) + 8, len(answer.split())
        with lock:
            stats["answered"] += 1
        return {
            "id": "chatcmpl-" + hashlib.sha256(key.encode()).hexdigest()[:12],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                      "total_tokens": tokens_in + tokens_out},
        }

    @app.get("/stats")
    async def read_stats() -> dict[str, int]:
        return dict(stats)

    return app


_ANSWERS = {
    "capital": "The capital of France is Paris.",
    "boil": "Water boils at one hundred degrees Celsius at sea level.",
    "planet": "Jupiter is the largest planet in the solar system.",
    "author": "Hamlet was written by William Shakespeare.",
}


def _answer(prompt: str, model: str, temperature: float) -> str:
    """A deterministic answer: right for the "good" model at low temperature, vaguer
    otherwise (so the scores differ by model and temperature)."""
    for word, answer in _ANSWERS.items():
        if word in prompt.lower():
            if model.endswith("good") and temperature < 0.5:
                return answer
            if temperature < 0.5:
                return answer.split(" is ")[0] + " is something I am not sure about."
            return "I would rather talk about the weather today."
    return "I do not know."


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rps", type=int, default=50)
    args = parser.parse_args()
    uvicorn.run(create_app(args.rps), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
