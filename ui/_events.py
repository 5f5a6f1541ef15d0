"""Server-sent events of one open page: its fragments, re-sent when what they show changes.

    page ──EventSource──▶ stream(live) ── every poll: live.versions() (index lookups) ──▶
        changed fragments: live.render(name) ──▶ `event: <name>` `id: <snapshot id>` `data: html`

A page names, per live fragment, an event (`sse-swap` in its template); the stream sends
that fragment again only when its version changes. Every event carries the id of the
snapshot it belongs to; a page passes the id of the snapshot it was rendered from
(`since`), and a browser that reconnects sends the last id it got (`Last-Event-ID`): a
stream that starts at the snapshot the client already shows sends nothing until something
changes, one that does not sends every fragment once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Hashable, Mapping
from typing import Protocol

from sse_starlette import ServerSentEvent


class Live(Protocol):
    """The live fragments of one page."""

    def versions(self) -> Mapping[str, Hashable]:
        """Each fragment's version, read from the index now (what `render` then shows)."""
        ...

    def render(self, name: str) -> str:
        """The HTML of fragment `name`, as of the last `versions()`."""
        ...


def snapshot_id(versions: Mapping[str, Hashable]) -> str:
    """The id of a snapshot: the same for the same versions of every fragment."""
    return hashlib.sha1(repr(sorted(versions.items())).encode()).hexdigest()[:16]


async def stream(live: Live, last_event_id: str | None,
                 poll_seconds: float) -> AsyncIterator[ServerSentEvent]:
    """The events of `live`'s page, forever (the server ends it when the client goes)."""
    sent: dict[str, Hashable] = {}
    first = True
    while True:
        versions = dict(await asyncio.to_thread(live.versions))
        current = snapshot_id(versions)
        if first and last_event_id == current:
            sent = versions
        first = False
        for name, version in versions.items():
            if sent.get(name) != version:
                html = await asyncio.to_thread(live.render, name)
                yield ServerSentEvent(data=html, event=name, id=current)
        sent = versions
        await asyncio.sleep(poll_seconds)
