"""Folders under a root folder's fd, opened one component at a time, never through a symlink.

Each component is opened relative to its parent's fd with O_NOFOLLOW|O_DIRECTORY, starting
from the root's fd, so a symlink (one a restore made, or one already in the target) is never
followed: a path through one is refused. The last folder opened stays open, because members
arrive grouped by folder.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Refused(Exception):
    """A member that the target folder's contents make unsafe or impossible to create."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def identity_of(st: os.stat_result) -> int:
    """A file's device and inode as one number."""
    return (st.st_dev << 64) | st.st_ino


def _shown(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


class FolderWalk:
    """Opens folders under `root` (an fd it does not own); `forget` before moving folders.

    `made` is called with the device and inode of every folder it creates (a folder above a
    member whose own member comes later, or never), so that the restore knows it as its own.
    """

    def __init__(self, root: int, made: Callable[[int], None]) -> None:
        self._root = root
        self._made = made
        self._cached: tuple[tuple[str, ...], int] | None = None  # last folder and its fd

    def _step(self, fd: int, parts: tuple[str, ...], depth: int, create: bool) -> int:
        name = parts[depth]
        try:
            return os.open(name, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
        try:
            os.mkdir(name, 0o777, dir_fd=fd)
        except FileExistsError:
            return os.open(name, DIR_FLAGS, dir_fd=fd)
        made = os.open(name, DIR_FLAGS, dir_fd=fd)
        self._made(identity_of(os.fstat(made)))
        return made

    def _not_a_folder(self, parts: tuple[str, ...]) -> Refused:
        return Refused(
            f"{_shown(parts)!r} in the target folder is a symlink or not a folder (not followed)"
        )

    def folder(self, parts: tuple[str, ...], create: bool = True) -> int:
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
        self.forget()
        self._cached = (parts, fd)
        return fd

    def forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None
