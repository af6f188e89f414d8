"""The one Range form the contract serves: a single `bytes=a-b` or `bytes=a-`.

Several ranges, suffix ranges (`bytes=-n`), other units and `a > b` are all "malformed"
(416 INVALID_RANGE); a start at or past the end is 416 RANGE_NOT_SATISFIABLE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SINGLE = re.compile(r"^bytes=(\d{1,19})-(\d{0,19})$")


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, total: int) -> str:
        return f"bytes {self.start}-{self.end}/{total}"


class MalformedRange(ValueError):
    pass


class UnsatisfiableRange(ValueError):
    pass


def parse_range(header: str, total: int) -> ByteRange:
    """The range to serve from a file of `total` bytes; raises the two errors above."""
    match = _SINGLE.fullmatch(header.strip())
    if match is None:
        raise MalformedRange(f"unsupported Range {header[:100]!r}: use one bytes=a-b or bytes=a-")
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else None
    if end is not None and end < start:
        raise MalformedRange(f"Range end {end} is before its start {start}")
    if start >= total:
        raise UnsatisfiableRange(f"Range starts at {start}, the file has {total} bytes")
    last = total - 1
    return ByteRange(start, last if end is None else min(end, last))
