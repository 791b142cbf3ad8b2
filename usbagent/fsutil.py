"""Crash-safe file primitives shared by the archive writer, the stick copier and the state dir.

The rule everywhere: data goes to `<name>.partial`, is fsynced, renamed to `<name>`, then the
directory is fsynced. A final name therefore always denotes complete, durable content.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import pwd
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from usbagent import mounts
from usbagent.naming import PARTIAL

_SPECIAL = (
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: Path) -> str | None:
    """'a block device' etc. when `path` (followed) is neither a file nor a folder: tar
    archives such a thing as a node, never what it holds. None otherwise, or if it is gone."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return next((kind for test, kind in _SPECIAL if test(mode)), None)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(final: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Open `<final>.partial` for writing; on clean exit fsync and rename it to `final`.

    On any exception (including KeyboardInterrupt/SystemExit from a signal) the partial file
    is removed and `final` is untouched.
    """
    partial = final.with_name(final.name + PARTIAL)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        partial.rename(final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    fsync_dir(final.parent)


def write_atomic(final: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a small file atomically (state files, sidecars, metrics)."""
    with atomic_writer(final, mode) as f:
        f.write(data)


@dataclass(frozen=True)
class Unwritable:
    """Why files cannot be created in a folder, and what fixes it."""

    reason: str  # completes "FOLDER ...", e.g. "is on a read-only file system (...)"
    fix: str


def unwritable(folder: Path) -> Unwritable | None:
    """Try to create a file in `folder` (an unnamed O_TMPFILE where supported: nothing is
    left behind); None when that works, else why not.

    Tried for real, not judged from mode bits: root passes every permission check, so
    os.access cannot tell a read-only mount, which needs a remount, from permissions,
    which need a chown or chmod.
    """
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return _why_unwritable(folder, exc)


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _why_unwritable(folder: Path, exc: OSError) -> Unwritable:
    if exc.errno == errno.EROFS:
        try:
            mount = mounts.containing(folder.resolve(), mounts.read())
        except OSError:
            mount = None
        where = mount.mountpoint if mount else "its mount point"
        return Unwritable(
            f"is on a read-only file system ({where} is mounted read-only)",
            f"remount it read-write (mount -o remount,rw {where})",
        )
    if exc.errno == errno.EACCES:
        me = _user(os.geteuid())
        try:
            st = folder.stat()
            owner = f" (owner {_user(st.st_uid)}, mode {st.st_mode & 0o7777:o})"
        except OSError:
            owner = ""
        return Unwritable(
            f"is not writable by {me}{owner}",
            f"chown {me} {folder}, or give {me} write permission on it",
        )
    if exc.errno == errno.EPERM:
        return Unwritable(
            "refuses new files (EPERM): it is probably immutable or append-only",
            f"lsattr -d {folder}; chattr -i -a {folder}",
        )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Unwritable(f"is full ({exc.strerror})", "free some space on it")
    return Unwritable(f"cannot be written: {exc.strerror}", f"check {folder} and its disk")


_LIBC = ctypes.CDLL(None, use_errno=True)
_SYNC_FILE_RANGE = getattr(_LIBC, "sync_file_range", None)
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4  # linux/fs.h


def writeback(fd: int, offset: int, length: int, wait: bool) -> None:
    """Start (or start and wait for) writeback of a byte range: sync_file_range(2).

    Only data, not metadata or the drive's cache: the fsync at the end still makes the
    copy durable. Without sync_file_range (not glibc), fall back to fdatasync when waiting.
    """
    if _SYNC_FILE_RANGE is None:
        if wait:
            os.fdatasync(fd)
        return
    flags = _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER if wait else _SFR_WRITE
    if _SYNC_FILE_RANGE(fd, offset, length, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_RENAMEAT2 = getattr(_LIBC, "renameat2", None)
if _RENAMEAT2 is not None:
    _RENAMEAT2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
_RENAME_NOREPLACE = 1  # linux/fs.h
_SYNCFS = getattr(_LIBC, "syncfs", None)


def rename_noreplace(dir_fd: int, src: str, dst: str) -> None:
    """Rename `src` to `dst` inside one folder, failing with EEXIST if `dst` exists.

    renameat2(RENAME_NOREPLACE) is atomic. Where the filesystem lacks the flag (EINVAL), a
    hard link (which also refuses an existing name) and an unlink do the same in two steps.
    """
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    os.unlink(src, dir_fd=dir_fd)


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding `fd` (one call instead of an fsync per file)."""
    if _SYNCFS is None or _SYNCFS(fd) != 0:
        os.sync()


@contextlib.contextmanager
def flocked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (created 0600, never through a symlink).

    flock excludes threads (each call opens its own descriptor) and processes alike, which
    is what the state dir's read-modify-write cycles need: the agent's sync threads, the
    archive job and the OnFailure hook may all write at once.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file as it is now (read once, in hashlib's C loop)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
