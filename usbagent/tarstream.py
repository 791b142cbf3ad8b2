"""What tar stored, per source: counted from its output on the way to zstd (no second read).

The archive must contain what was asked; a source that yields nothing is a failure, not an
empty backup. Rather than parse tar's verbose listing (text meant for people, which quotes
odd names and varies with the locale), `Tally` reads the 512-byte headers of the stream
itself as it passes through, skipping file data by arithmetic: constant memory, a few
microseconds per member. The stream is GNU format (`tar --format=gnu`): names longer than
100 bytes come in a preceding 'L' record, long link targets in a 'K' record, sizes beyond
octal's range in base-256. Anything that is not such a header where one must be raises
`TarStreamError`: counts that cannot be trusted fail the run instead of passing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BLOCK = 512
_ZERO = bytes(BLOCK)
_LONGNAME, _LONGLINK = ord("L"), ord("K")
_REGULAR = frozenset(b"0\x007")  # typeflags of members whose size is file content
_MAGIC = b"ustar "  # GNU format's magic ("ustar  \0")


class TarStreamError(Exception):
    """tar's output did not parse as a GNU tar stream."""


@dataclass(frozen=True)
class SourceCount:
    """Members (of any type, the source's own folder included) and file bytes it yielded."""

    path: str
    members: int
    bytes: int


def yielded_nothing(
    count: SourceCount, is_dir: bool, has_entries: bool, increment: bool = False
) -> bool:
    """A source that has content on disk but nothing of it in the archive (pure).

    A folder yields itself first, so one member (or none, when excluded) means nothing
    beneath it: right only for an empty folder. In an increment the folder's member is its
    listing (a GNU dumpdir), present even when nothing changed, and an unchanged file
    yields nothing at all; so there only a folder missing itself is hollow. (What the
    exclusions leave out cannot change within a chain: a changed selection forces a full.)
    """
    if increment:
        return is_dir and count.members == 0
    if is_dir:
        return has_entries and count.members <= 1
    return count.members == 0


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or base-256 when the high bit is set (GNU)."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text or b"0", 8)


class Tally:
    """Feed it tar's output in any pieces; `counts()` then says what each source yielded.

    `roots` are the sources' paths (as named) and their member names in the archive; a
    member belongs to the root it equals or lies under (sources never overlap). `own` is the
    file name of the archive being written: a member of that name (`self.own`) means tar
    reached the destination, by whatever path, and the archive would contain itself.
    """

    def __init__(self, roots: Sequence[tuple[str, str]], own: str) -> None:
        self._paths = [path for path, _ in roots]
        self._roots = [name.encode("utf-8", "surrogateescape") for _, name in roots]
        self._prefixes = [root + b"/" for root in self._roots]
        self._members = [0] * len(roots)
        self._bytes = [0] * len(roots)
        self._offset = 0  # of the next byte fed, for error messages
        self._header = bytearray()  # a header split across two pieces
        self._skip = 0  # data (and padding) of the current member still to pass over
        self._collect = 0  # of those, bytes that are a long name to keep
        self._long = bytearray()
        self._long_name: bytes | None = None  # the name for the next member
        self._own = b"/" + own.encode("utf-8", "surrogateescape")
        self.own: str | None = None  # the member name it was stored under

    def feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                pos = self._pass(data, pos, end)
            elif self._header or end - pos < BLOCK:  # a header split across pieces
                take = min(BLOCK - len(self._header), end - pos)
                self._header += data[pos : pos + take]
                pos += take
                if len(self._header) == BLOCK:
                    self._block(bytes(self._header), self._offset + pos - BLOCK)
                    self._header.clear()
            else:
                self._block(bytes(data[pos : pos + BLOCK]), self._offset + pos)
                pos += BLOCK
                if not self._collect and pos + self._skip <= end:  # data within this piece
                    pos += self._skip
                    self._skip = 0
        self._offset += end

    def _pass(self, data: memoryview, pos: int, end: int) -> int:
        """Pass over member data from `pos`, keeping a long name; returns the new position."""
        step = min(self._skip, end - pos)
        if self._collect:
            take = min(self._collect, step)
            self._long += data[pos : pos + take]
            self._collect -= take
        self._skip -= step
        if not self._skip and self._long:
            self._long_name = bytes(self._long).split(b"\0", 1)[0]
            self._long.clear()
        return pos + step

    def _block(self, block: bytes, offset: int) -> None:
        if block == _ZERO:  # end of archive, and the padding of the last record
            return
        if block[257:263] != _MAGIC:
            raise TarStreamError(f"no GNU tar header at byte {offset} of tar's output")
        size = _number(block[124:136])
        self._skip = -(-size // BLOCK) * BLOCK
        kind = block[156]
        if kind == _LONGNAME:
            self._collect = size
            return
        if kind == _LONGLINK:
            return
        name = self._long_name or block[:100].split(b"\0", 1)[0]
        self._long_name = None
        if name.endswith(self._own) and self.own is None:
            self.own = name.decode("utf-8", "surrogateescape")
        for i, prefix in enumerate(self._prefixes):
            if name.startswith(prefix) or name == self._roots[i] or name == prefix:
                self._members[i] += 1
                if kind in _REGULAR:
                    self._bytes[i] += size
                return

    def counts(self) -> tuple[SourceCount, ...]:
        return tuple(
            SourceCount(path, members, size)
            for path, members, size in zip(self._paths, self._members, self._bytes, strict=True)
        )
