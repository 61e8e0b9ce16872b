"""The answer Prefect's app gives to a call, read as it passes through a middleware (master/new_runs.py,
master/completed_runs.py): sent on untouched, and kept, unzipped, up to a size."""

from __future__ import annotations

import zlib


async def pass_through(app, scope, receive, send, limit: int) -> tuple[int | None, str | None]:
    """Call ``app``, send its answer on, and return (its status, its body as text); the text is None
    when the body is larger than ``limit`` bytes (zipped or not) or unreadable."""
    status, encoding, body = None, b"", bytearray()

    async def watch(message):
        nonlocal status, encoding, body
        if message["type"] == "http.response.start":
            status = message["status"]
            encoding = dict(message.get("headers") or []).get(b"content-encoding", b"")
        elif message["type"] == "http.response.body" and body is not None:
            body.extend(message.get("body", b""))
            if len(body) > limit:
                body = None
        await send(message)

    await app(scope, receive, watch)
    return status, answer_text(bytes(body), encoding, limit) if body is not None else None


def answer_text(body: bytes, encoding: bytes, limit: int) -> str | None:
    """An answer's JSON text (Prefect's app gzips answers over 500 bytes); None if unreadable
    or, unzipped, larger than ``limit`` bytes."""
    try:
        if encoding == b"gzip":
            body = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, limit + 1)
        elif encoding:
            return None
        return body.decode() if len(body) <= limit else None
    except (zlib.error, UnicodeDecodeError):
        return None


__all__ = ["answer_text", "pass_through"]
