"""Content-Encoding decoding with a bound on the decoded size: gzip, deflate, identity.

Pure: bytes in, bytes out. The bound applies to the decoded bytes, and no more than
`limit` + 1 of them are ever held, so a compression bomb costs no more memory than
an honest answer.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol

_WBITS: dict[str, int | None] = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,  # the old name, which RFC 9110 asks recipients to accept
    "deflate": None,  # zlib-wrapped or raw: servers send both as "deflate"; the header tells
}


class Refused(Exception):
    """The body cannot be used (too big, corrupt, cut short); the message says why."""


class Decoder(Protocol):
    def feed(self, data: bytes) -> None: ...

    def finish(self) -> bytes: ...


def decoder_for(header: str, limit: int) -> Decoder | str:
    """A decoder for a body sent with this Content-Encoding header, or why there is none."""
    codings = [c for c in (part.strip().lower() for part in header.split(",")) if c not in ("", "identity")]
    if not codings:
        return Identity(limit)
    if len(codings) == 1 and codings[0] in _WBITS:
        return Inflate(codings[0], _WBITS[codings[0]], limit)
    return f"the body is encoded as '{header.strip()[:60]}', which cannot be decoded (only gzip or deflate)"


class Identity:
    """The body as sent, refused past `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            msg = f"the body is larger than {self._limit} bytes"
            raise Refused(msg)
        self._parts.append(data)

    def finish(self) -> bytes:
        return b"".join(self._parts)


class Inflate:
    """A gzip or deflate stream decoded as it arrives, refused past `limit` decoded bytes."""

    def __init__(self, name: str, wbits: int | None, limit: int) -> None:
        self._name = name
        self._limit = limit
        self._z = None if wbits is None else zlib.decompressobj(wbits)
        self._head = b""  # deflate: the first bytes, until two tell zlib-wrapped from raw
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> None:
        if self._z is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._z = zlib.decompressobj(zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS)
        try:
            self._inflate(self._z, data)
        except zlib.error:
            msg = f"the {self._name} body is corrupt"
            raise Refused(msg) from None

    def _inflate(self, z: Any, data: bytes) -> None:
        if z.eof:
            raise zlib.error  # bytes after the end of the stream
        while data:
            # max_length: zlib stops at the bound and keeps the rest of the input aside.
            piece = z.decompress(data, self._limit + 1 - self._size)
            self._size += len(piece)
            if self._size > self._limit:
                msg = f"the decoded body is larger than {self._limit} bytes (a compression bomb?)"
                raise Refused(msg)
            self._parts.append(piece)
            data = z.unconsumed_tail
        if z.unused_data:
            raise zlib.error

    def finish(self) -> bytes:
        if self._z is None or not self._z.eof:
            msg = f"the {self._name} body ends early (truncated)"
            raise Refused(msg)
        return b"".join(self._parts)


def _zlib_header(data: bytes) -> bool:
    """RFC 1950: compression method 8, and a header check that makes it a multiple of 31."""
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
