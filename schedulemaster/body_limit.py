"""Reading a request body within bounds, for the project's ASGI apps (the legacy API on :30000,
the import endpoints on Prefect's port): refused before it is read when its declared length is
over the limit, cut off when it grows past the limit while it arrives (chunked), and cut off
when it stops arriving or trickles, instead of holding the connection for good."""

from __future__ import annotations

import asyncio
import os

#: a body that sends nothing for this long is cut off (408); tests shorten it
IDLE_SECONDS = float(os.environ.get("SM_BODY_IDLE_SECONDS", "15"))


class BodyAborted(Exception):
    """Reading the body was given up: the middleware answers (413 or 408), not the endpoint."""


class BodyTooLarge(BodyAborted):
    """The body grew past its limit while being read."""


class BodyStalled(BodyAborted):
    """The body stopped arriving (or arrived too slowly) while being read."""


def declared_too_large(scope, limit: int) -> bool:
    """The request says (Content-Length) it is bigger than ``limit``, or says nonsense."""
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > limit):
            return True
    return False


def bounded(receive, limit: int, total_seconds: float):
    """``receive`` that raises BodyTooLarge past ``limit`` bytes and BodyStalled when a chunk
    takes longer than IDLE_SECONDS or the body is not complete after ``total_seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + total_seconds
    received = 0
    done = False

    async def bounded_receive():
        nonlocal received, done
        if done:  # after the body only a disconnect can come; no clock on that
            return await receive()
        try:
            async with asyncio.timeout(min(IDLE_SECONDS, max(0.0, deadline - loop.time()))):
                message = await receive()
        except TimeoutError:
            raise BodyStalled() from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge()
            done = not message.get("more_body", False)
        return message

    return bounded_receive
