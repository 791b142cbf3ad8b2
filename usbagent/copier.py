"""Acts on a mounted stick: audit existing copies, copy + verify new ones, prune old ones.

A stick is a file system someone else controls, so every operation goes through a file
descriptor of the backup folder (`dir_fd`) with plain names and O_NOFOLLOW: a symlinked
folder, a symlinked file or a symlink named like an archive can never make us read, write or
delete a host file. A stick whose folder or archive-like entries are symlinks (or anything
but regular files) is refused outright, with the offending name in the reason.

A final name on the stick only ever denotes verified content: each copy is written as
`<name>.partial`, fsynced, read back from the device (page cache dropped with
POSIX_FADV_DONTNEED) and hashed, and only then renamed, the renamed file fsynced again (on FAT
a rename alone leaves an empty entry under the final name) and the folder fsynced; its
sidecar follows the same way.

pyfilesystem2 is deliberately not used here: its OSFS works on path strings and follows
symlinks (os.stat, os.scandir(path)), so it cannot give these guarantees.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

from usbagent import naming, plan
from usbagent.fsutil import writeback
from usbagent.plan import Audit, LocalArchive, StickFile

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024  # large enough for full-speed sequential I/O, small enough to cancel fast
_SIDECAR_MAX = 4096
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class StickRefused(Exception):
    """The stick's folder cannot be used safely; the message says why and what to do."""


class VerifyFailed(Exception):
    """A copy read back from the stick does not match the archive's sha256."""


class DeviceFailed(Exception):
    """The device failed a write the filesystem had room for (failing or fake-capacity stick)."""


class Cancelled(Exception):
    """The caller asked us to stop (agent shutdown, Ctrl-C)."""


def sidecar_line(archive: LocalArchive | StickFile) -> bytes:
    return naming.sidecar_line(archive.name, archive.sha256)


class StickFolder:
    """The backup folder on a mounted stick, held open as a directory file descriptor."""

    def __init__(self, mountpoint: Path, directory: str, prefix: str) -> None:
        self.path = mountpoint / directory
        self.prefix = prefix
        if not os.path.ismount(mountpoint):  # never fill the disk under an absent stick
            raise OSError(errno.ENODEV, "nothing is mounted there any more", str(mountpoint))
        self._root = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.fd = self._open_folder(directory)
        except BaseException:
            os.close(self._root)
            raise

    def _open_folder(self, directory: str) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o755, dir_fd=self._root)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(directory, flags, dir_fd=self._root)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            what = "a symlink" if self._is_link(directory, self._root) else "not a folder"
            raise StickRefused(
                f"{self.path} is {what}; refusing to use this stick (remove or rename it)"
            ) from None
        if os.fstat(fd).st_dev != os.fstat(self._root).st_dev:
            os.close(fd)
            raise StickRefused(
                f"{self.path} is on another filesystem than the stick (something is mounted "
                "on it); unmount it first"
            )
        return fd

    @staticmethod
    def _is_link(name: str, dir_fd: int) -> bool:
        try:
            return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except OSError:
            return False

    def close(self) -> None:
        for fd in (self.fd, self._root):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> StickFolder:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- looking ------------------------------------------------------------------------

    def free_bytes(self) -> int:
        st = os.fstatvfs(self.fd)
        return st.f_bavail * st.f_frsize

    def _ours(self, name: str) -> bool:
        """An archive, sidecar or temporary of our prefix: the only names we ever touch."""
        base = name.removesuffix(naming.PARTIAL).removesuffix(naming.SIDECAR)
        return naming.parse(base, self.prefix) is not None

    def scan(self) -> dict[str, int]:
        """Our regular files in the folder with their sizes; refuse if any is not regular."""
        found: dict[str, int] = {}
        with os.scandir(self.fd) as entries:
            names = [e.name for e in entries]
        for name in names:
            if not self._ours(name):
                continue
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise StickRefused(
                    f"{self.path / name} is {what} but is named like an archive; refusing "
                    "to touch this stick (remove it)"
                )
            found[name] = st.st_size
        return found

    def remove_partials(self, gone: Sequence[str]) -> list[str]:
        """Delete leftovers of an interrupted run (`plan.leftovers` decides which)."""
        for name in gone:
            os.unlink(name, dir_fd=self.fd)
        if gone:
            os.fsync(self.fd)
        return list(gone)

    def read_sidecar(self, name: str) -> str | None:
        try:
            fd = os.open(name + naming.SIDECAR, _OPEN_READ, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        try:
            return naming.sidecar_digest(os.read(fd, _SIDECAR_MAX).decode(errors="replace"), name)
        finally:
            os.close(fd)

    def sha256(self, name: str, cancel: threading.Event) -> str:
        """Hash a file as the device holds it, not as the page cache remembers it."""
        fd = os.open(name, _OPEN_READ, dir_fd=self.fd)
        try:
            return _hash_from_device(fd, cancel)
        finally:
            os.close(fd)

    # --- checking what is there ---------------------------------------------------------

    def audit(
        self,
        files: dict[str, int],
        local: Sequence[LocalArchive],
        recorded: Sequence[StickFile],
        recorded_names: Collection[str],
        now: datetime,
        cancel: threading.Event,
    ) -> Audit:
        """Re-read every file that may be a copy of ours; act on what `plan.judge` decides.

        Which files count, and against which hash, is decided by `plan.survey` from the
        host's records alone. Here: read back from the device, rewrite sidecars of verified
        copies that do not match, and remove sidecars of ours whose archive a prune
        interrupted. Corrupt copies of ours are removed later by the sync, once the local
        archive that replaces them passed its own check. Nothing else is deleted: a file
        usbagent did not write is reported (`Audit.foreign`), not removed.
        """
        sidecars = {
            name: self.read_sidecar(name)
            for name in files
            if naming.parse(name, self.prefix) and name + naming.SIDECAR in files
        }
        found = plan.survey(files, sidecars, local, recorded, recorded_names, self.prefix, now)
        read_back = {
            check.expect.name: self.sha256(check.expect.name, cancel)
            for check in found.checks
            if check.size == check.expect.size
        }
        audit = plan.judge(found, read_back)
        for copy in audit.fix_sidecars:
            self.write_small(copy.name + naming.SIDECAR, sidecar_line(copy))
        for name in found.stale_sidecars:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self.fd)
        return audit

    # --- changing -----------------------------------------------------------------------

    def write_small(self, name: str, data: bytes) -> None:
        """Write a small file (a sidecar) the crash-safe way: partial, fsync, rename."""
        partial = name + naming.PARTIAL
        fd = os.open(partial, _OPEN_NEW, 0o644, dir_fd=self.fd)
        try:
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._rename_durably(partial, name)
        except BaseException:
            self._unlink_quietly(partial)
            raise

    def copy_in(
        self,
        source: Path,
        archive: LocalArchive,
        cancel: threading.Event,
        on_chunk: Callable[[int], None],
    ) -> None:
        """Copy one archive and its sidecar; on return both are verified under final names.

        On any failure (including cancellation and KeyboardInterrupt) nothing of this
        archive is left under a final name; the `.partial` is removed when the stick still
        allows it (otherwise the next run removes it).
        """
        partial = archive.name + naming.PARTIAL
        with open(source, "rb") as src:
            out = os.open(partial, _OPEN_NEW, 0o644, dir_fd=self.fd)
            try:
                try:
                    _send(src.fileno(), out, archive.size, cancel, on_chunk)
                    os.fsync(out)
                except OSError as exc:
                    explained = self._explain_enospc(exc)
                    if explained is exc:
                        raise
                    raise explained from exc
                finally:
                    os.close(out)
                digest = self.sha256(partial, cancel)
                if digest != archive.sha256:
                    raise VerifyFailed(
                        f"{archive.name}: the copy read back from the stick has sha256 "
                        f"{digest}, expected {archive.sha256}"
                    )
                self._rename_durably(partial, archive.name)
            except BaseException:
                self._unlink_quietly(partial)
                raise
        try:
            self.write_small(archive.name + naming.SIDECAR, sidecar_line(archive))
        except BaseException:
            self._unlink_quietly(archive.name)
            raise

    def _rename_durably(self, partial: str, name: str) -> None:
        """Rename a verified `partial` to its final `name` and make that durable.

        On FAT a rename writes the new directory entry with no clusters and size 0; the real
        entry is written with the file's inode, later. A stick pulled or a power cut before
        then left an empty file under the final name (seen on the vm tier's FAT32 sticks).
        So the renamed file is fsynced, which writes its entry, and then the folder. If
        that fails, the final name is removed: it is not known to hold the content.
        """
        os.rename(partial, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        try:
            fd = os.open(name, _OPEN_READ, dir_fd=self.fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.fsync(self.fd)
        except BaseException:
            self._unlink_quietly(name)
            raise

    def _explain_enospc(self, exc: OSError) -> Exception:
        """ENOSPC while the filesystem still has room means the device refused the write.

        A loop device over a full backing store, a failing stick, or a counterfeit stick
        that reports more capacity than it has: "the stick is full" would send a person
        looking for files to delete instead of at the hardware.
        """
        if exc.errno != errno.ENOSPC:
            return exc
        with contextlib.suppress(OSError):
            free = self.free_bytes()
            if free > 2 * CHUNK:
                return DeviceFailed(
                    f"the stick refused a write as full although its filesystem shows {free} "
                    "bytes free: the device is failing or has less capacity than it claims "
                    "(test it with f3 or h2testw, or replace it)"
                )
        return exc

    def remove(self, name: str) -> None:
        """Delete one of our archives and then its sidecar (an orphan sidecar is harmless)."""
        os.unlink(name, dir_fd=self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name + naming.SIDECAR, dir_fd=self.fd)
        os.fsync(self.fd)

    def _unlink_quietly(self, name: str) -> None:
        """Cleanup on a failure path: the stick may be read-only or gone by now."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s (%s); the next sync removes it", name, exc)


def _send(
    src: int, dst: int, size: int, cancel: threading.Event, on_chunk: Callable[[int], None]
) -> None:
    """Copy `size` bytes in the kernel (sendfile), a chunk at a time so we can stop.

    Each chunk's writeback is started at once and waited for one chunk later, then its
    pages are dropped: at most two chunks are ever dirty. Without this the page cache would
    soak up gigabytes, and the final fsync (not interruptible) could take minutes on a slow
    stick, so a shutdown could not stop the copy in time; it also keeps a multi-GB copy
    from evicting the host's useful cache.
    """
    done = 0
    while done < size:
        if cancel.is_set():
            raise Cancelled
        sent = os.sendfile(dst, src, done, min(CHUNK, size - done))
        if sent == 0:
            raise OSError(errno.EIO, f"the archive ended after {done} of {size} bytes")
        writeback(dst, done, sent, wait=False)
        if done:
            previous = max(0, done - CHUNK)
            writeback(dst, previous, done - previous, wait=True)
            os.posix_fadvise(dst, previous, done - previous, os.POSIX_FADV_DONTNEED)
        done += sent
        on_chunk(done)
    if os.fstat(src).st_size != size:
        raise OSError(errno.EIO, "the archive changed size while it was being copied")


def _hash_from_device(fd: int, cancel: threading.Event) -> str:
    # Clean pages (the file was fsynced) are dropped, so the reads below go to the device.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while n := f.readinto(buf):
            if cancel.is_set():
                raise Cancelled
            h.update(view[:n])
    return h.hexdigest()
