"""multipart/related bodies (RFC 2387, PS3.18 8.6.1.2) written as they are produced.

A `MultipartWriter` turns parts into the byte chunks of one body: each part's header goes
out with the first chunk of its content, so that a small part costs one send, and a large
one streams in the chunks its producer reads (never the whole part in memory). The boundary
is random, so no content can contain it by chance.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator


class MultipartWriter:
    """The framing of one multipart/related body whose parts are of `part_type`."""

    def __init__(self, part_type: str) -> None:
        self.part_type = part_type
        self.boundary = f"pacsd-{secrets.token_hex(16)}"
        self.parts = 0

    @property
    def content_type(self) -> str:
        """The response's Content-Type (PS3.18 8.7.3.1: `type` names the parts' media type)."""
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def part_head(self, content_type: str, location: str | None = None) -> bytes:
        """The delimiter and headers that open the next part."""
        lead = b"\r\n" if self.parts else b""
        self.parts += 1
        head = f"--{self.boundary}\r\nContent-Type: {content_type}\r\n"
        if location:
            head += f"Content-Location: {location}\r\n"
        return lead + head.encode("ascii") + b"\r\n"

    def close(self) -> bytes:
        """The final delimiter (after the last part, or alone for a body without parts)."""
        lead = b"\r\n" if self.parts else b""
        return lead + f"--{self.boundary}--\r\n".encode("ascii")

    async def part(
        self, content_type: str, chunks: AsyncIterator[bytes], location: str | None = None
    ) -> AsyncIterator[bytes]:
        """One part: its head joined to its first chunk, then the other chunks as they come."""
        head = self.part_head(content_type, location)
        async for chunk in chunks:
            if head:
                chunk, head = head + chunk, b""
            if chunk:
                yield chunk
        if head:
            yield head  # an empty part
