"""Request bodies, bounded as they are read: a body over ``serve.max_body_bytes`` is refused with
413 from its ``Content-Length``, or while it streams when there is none (chunked uploads,
multipart forms included), and what is left of it is read and dropped, up to :data:`DRAIN_BYTES`,
so that clients which send everything before they read see the 413 rather than a reset.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from mnistops.serve.inputs import BadInput

# How much of a refused body is read and dropped before the 413 is sent. A client that sends the
# whole body before it reads the answer (Python's urllib, requests) sees "connection reset" instead
# of the 413 if the server closes with the body unread; reading it costs one chunk of memory at a
# time. A body larger than this is cut off unread (the client may then see the reset).
DRAIN_BYTES = 16_000_000


async def _drain(request: Any, budget: int = DRAIN_BYTES) -> None:
    """Read and drop what is left of the body, up to ``budget`` bytes."""
    async for chunk in request.stream():
        budget -= len(chunk)
        if budget < 0:
            return


def _declared_size(request: Any) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


async def _refuse_declared_size(request: Any, limit: int) -> None:
    """413 from the ``Content-Length`` header alone, before any of the body is kept."""
    declared = _declared_size(request)
    if declared is not None and declared > limit:
        if declared <= DRAIN_BYTES:
            await _drain(request)
        raise BadInput(413, f"the body is {declared:,} bytes; at most {limit:,} (serve.max_body_bytes)")


async def read_body(request: Any, limit: int) -> bytes:
    """The body, refused with 413 once it passes ``limit`` bytes (before it is all kept)."""
    await _refuse_declared_size(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request)
            raise BadInput(413, f"the body passed {limit:,} bytes (serve.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Any, limit: int) -> bytes:
    """The first file of a multipart form, the whole body within ``limit`` bytes: it is counted as
    it streams (a chunked upload has no ``Content-Length`` to refuse it by), then parsed."""
    body = await read_body(request, limit)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except Exception as exc:
        raise BadInput(400, f"the multipart form could not be read: {exc}") from None
    for value in form.values():
        if hasattr(value, "read"):
            data: bytes = await value.read()
            return data
    raise BadInput(422, "the form holds no file: upload the image as a file field (e.g. curl -F image=@digit.png)")
