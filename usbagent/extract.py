"""Create checked tar entries under a target folder, safe by construction (dir-fd I/O).

Python's tarfile extraction (and its filters, which resolve paths by name and had several
escapes) is not used. Instead:

- every path component is opened relative to its parent's fd with O_NOFOLLOW|O_DIRECTORY,
  starting from the target's fd, so a symlink (ours or one already in the target) is never
  followed: a member under it is refused;
- a file is written to a fresh temporary name (O_CREAT|O_EXCL|O_NOFOLLOW), its mode and
  times are set through its fd, and it is renamed to its name with RENAME_NOREPLACE: nothing
  is overwritten and no final name ever holds a partial file;
- a hard link is made only to a regular file this restore created (checked by device and
  inode), so it cannot reach outside the target or alias a link; it creates no path that
  could be followed, so it is made in archive order;
- symlinks are created last, after every file and folder, so no member is ever written
  through one; folders get their mode and times at the very end, deepest first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from dataclasses import dataclass
from typing import IO

from usbagent.fsutil import rename_noreplace, syncfs
from usbagent.tarsafety import Entry

CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".usbagent-restore-"


class Refused(Exception):
    """A member that the target folder's contents make unsafe or impossible to create."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _DirFixup:
    parts: tuple[str, ...]
    mode: int
    mtime_ns: int
    identity: int  # device and inode of the folder this restore created


def _identity(st: os.stat_result) -> int:
    return (st.st_dev << 64) | st.st_ino


def _not_ours(source: str) -> str:
    return f"hard link to {source!r}, which is not a regular file this restore created"


def _shown(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


class Extractor:
    """Writes Entries under `root_fd` (not owned). Call `finish` once after the last `add`."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._cached: tuple[tuple[str, ...], int] | None = None  # last parent folder and fd
        self._created: set[int] = set()  # identities of the regular files this restore made
        self._symlinks: list[Entry] = []
        self._fixups: list[_DirFixup] = []

    # --- folders ------------------------------------------------------------------------

    def _step(self, fd: int, parts: tuple[str, ...], depth: int, create: bool) -> int:
        name = parts[depth]
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=fd)
        return os.open(name, _DIR_FLAGS, dir_fd=fd)

    def _not_a_folder(self, parts: tuple[str, ...]) -> Refused:
        return Refused(
            f"{_shown(parts)!r} in the target folder is a symlink or not a folder (not followed)"
        )

    def _folder(self, parts: tuple[str, ...], create: bool = True) -> int:
        """The fd of the folder `parts` under the root (borrowed: valid until the next call)."""
        if not parts:
            return self._root
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd, depth = self._root, 0
        if self._cached is not None and parts[: len(self._cached[0])] == self._cached[0]:
            fd, depth = self._cached[1], len(self._cached[0])
        start = fd
        try:
            while depth < len(parts):
                try:
                    nxt = self._step(fd, parts, depth, create)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    raise self._not_a_folder(parts[: depth + 1]) from None
                if fd not in (start, self._root):
                    os.close(fd)
                fd, depth = nxt, depth + 1
        except BaseException:
            if fd not in (start, self._root):
                os.close(fd)
            raise
        self._forget()
        self._cached = (parts, fd)
        return fd

    def _forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def _free(self, parent: int, name: str) -> None:
        """Refuse a name that already exists; say so when this restore made it (duplicate)."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode) and _identity(st) in self._created:
            raise Refused("appears twice in the archive; the first one was restored")
        raise Refused("already exists in the target folder (not overwritten)")

    # --- members ------------------------------------------------------------------------

    def add(self, entry: Entry, data: IO[bytes] | None) -> bool:
        """Create `entry` now (True) or queue it for `finish` (False: a symlink)."""
        if entry.kind == "symlink":
            self._symlinks.append(entry)
            return False
        if entry.kind == "dir":
            self._mkdir(entry)
        elif entry.kind == "hardlink":
            self._hard_link(entry)
        else:
            assert data is not None
            self._write(entry, data)
        return True

    def _mkdir(self, entry: Entry) -> None:
        if not entry.parts:
            return  # the target folder itself: left as it is
        parent = self._folder(entry.parts[:-1])
        name = entry.parts[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                return  # merging into a folder that exists: its mode and times stay
            raise Refused("already exists in the target folder (not overwritten)") from None
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        try:
            identity = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        self._fixups.append(_DirFixup(entry.parts, entry.mode, entry.mtime_ns, identity))

    def _write(self, entry: Entry, data: IO[bytes]) -> None:
        parent = self._folder(entry.parts[:-1])
        name = entry.parts[-1]
        self._free(parent, name)  # early, before copying the content
        temp = TEMP_PREFIX + secrets.token_hex(8)
        fd = os.open(temp, _NEW_FILE, 0o600, dir_fd=parent)
        try:
            try:
                while chunk := data.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fchmod(fd, entry.mode)
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                identity = _identity(os.fstat(fd))
            finally:
                os.close(fd)
            try:
                rename_noreplace(parent, temp, name)
            except FileExistsError:
                self._free(parent, name)
                raise Refused("already exists in the target folder (not overwritten)") from None
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=parent)
            raise
        self._created.add(identity)

    def _hard_link(self, entry: Entry) -> None:
        source = entry.link_parts
        try:
            source_parent = os.dup(self._folder(source[:-1], create=False))
        except FileNotFoundError:
            raise Refused(_not_ours(entry.link)) from None
        try:
            try:
                st = os.stat(source[-1], dir_fd=source_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise Refused(_not_ours(entry.link)) from None
            if not stat.S_ISREG(st.st_mode) or _identity(st) not in self._created:
                raise Refused(_not_ours(entry.link))
            parent = self._folder(entry.parts[:-1])
            self._free(parent, entry.parts[-1])
            os.link(
                source[-1],
                entry.parts[-1],
                src_dir_fd=source_parent,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        finally:
            os.close(source_parent)

    # --- the end --------------------------------------------------------------------------

    def finish(self) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Create the queued symlinks, then fix up folders; returns (made, failed) symlinks
        and folders that could not get their mode or times. Flushes the filesystem."""
        made: list[Entry] = []
        failed: list[tuple[Entry, str]] = []
        for entry in self._symlinks:
            try:
                self._symlink(entry)
            except Refused as exc:
                failed.append((entry, exc.reason))
            except OSError as exc:
                failed.append((entry, exc.strerror or str(exc)))
            else:
                made.append(entry)
        self._symlinks.clear()
        for fixup in reversed(self._fixups):
            problem = self._fix(fixup)
            if problem:
                failed.append((Entry(fixup.parts, "dir", fixup.mode, fixup.mtime_ns), problem))
        self._fixups.clear()
        self._forget()
        syncfs(self._root)
        return made, failed

    def _symlink(self, entry: Entry) -> None:
        parent = self._folder(entry.parts[:-1])
        name = entry.parts[-1]
        self._free(parent, name)
        try:
            os.symlink(entry.link, name, dir_fd=parent)
        except FileExistsError:
            raise Refused("already exists in the target folder (not overwritten)") from None
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _fix(self, fixup: _DirFixup) -> str | None:
        try:
            parent = self._folder(fixup.parts[:-1], create=False)
            fd = os.open(fixup.parts[-1], _DIR_FLAGS, dir_fd=parent)
        except (OSError, Refused):
            return "folder disappeared or was replaced during the restore"
        try:
            if _identity(os.fstat(fd)) != fixup.identity:
                return "folder was replaced during the restore"
            os.fchmod(fd, fixup.mode)
            os.utime(fd, ns=(fixup.mtime_ns, fixup.mtime_ns))
        except OSError as exc:
            return f"cannot set its mode or time: {exc.strerror}"
        finally:
            os.close(fd)
        return None
