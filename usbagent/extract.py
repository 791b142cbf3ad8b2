"""Create checked tar entries under a target folder, safe by construction (dir-fd I/O).

Python's tarfile extraction (and its filters, which resolve paths by name and had several
escapes) is not used. Instead:

- every path component is opened relative to its parent's fd with O_NOFOLLOW|O_DIRECTORY
  (usbagent.folderwalk), starting from the target's fd, so a symlink (ours or one already in
  the target) is never followed: a member under it is refused;
- a file is written to a fresh temporary name (O_CREAT|O_EXCL|O_NOFOLLOW), its mode and
  times are set through its fd, and it is renamed to its name with RENAME_NOREPLACE (or over
  what an earlier archive of the chain made there): nothing else is overwritten and no
  final name ever holds a partial file;
- a hard link is made only to a regular file this restore created (checked by device and
  inode), so it cannot reach outside the target or alias a link; it creates no path that
  could be followed, so it is made in archive order;
- symlinks are created after every file and folder of their archive, so no member of it is
  ever written through one; folders get their mode and times at the very end, deepest first.

Across a chain of archives (full, then increments in order) a later archive replaces,
renames and removes what an earlier one restored: only what this restore created (tracked
by device and inode) is ever replaced, renamed or removed, so what was in the target
before stays as it was. Between the check and the rename there is a window in which someone
else writing into the target at the same time could swap in a file of theirs; the threat
restore guards against is the archive, not a concurrent writer in the user's own target.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from typing import IO

from usbagent.folderwalk import DIR_FLAGS, FolderWalk, Refused, identity_of
from usbagent.fsutil import rename_noreplace, syncfs
from usbagent.tarsafety import Entry

CHUNK = 1024 * 1024
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".usbagent-restore-"


@dataclass(frozen=True)
class _DirFixup:
    parts: tuple[str, ...]
    mode: int
    mtime_ns: int
    identity: int  # device and inode of the folder this restore created


_EXISTS = "already exists in the target folder (not overwritten)"


def _not_ours(source: str) -> str:
    return f"hard link to {source!r}, which is not a regular file this restore created"


def _shown(parts: tuple[str, ...]) -> str:
    return "/".join(parts)


class Extractor:
    """Writes Entries under `root_fd` (not owned): call `end_archive` after each archive's
    last `add`, and `finish` once at the end."""

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._ours: set[int] = set()  # identities of everything this restore made
        self._walk = FolderWalk(root_fd, self._own)
        self._this_archive: set[int] = set()  # what the current archive made
        self._symlinks: list[Entry] = []
        self._fixups: dict[tuple[str, ...], _DirFixup] = {}

    # --- folders ------------------------------------------------------------------------

    def _claim(self, parent: int, name: str) -> bool:
        """Whether `name` exists and may be replaced (an earlier archive of the chain made
        it); refuse one that someone else made or this archive made already (a duplicate)."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if identity_of(st) in self._this_archive and stat.S_ISREG(st.st_mode):
            raise Refused("appears twice in the archive; the first one was restored")
        if identity_of(st) in self._this_archive or identity_of(st) not in self._ours:
            raise Refused(_EXISTS)
        if stat.S_ISDIR(st.st_mode) and not self._remove(parent, name):
            raise Refused("replaces a folder that holds files this restore did not create")
        return not stat.S_ISDIR(st.st_mode)

    def _own(self, identity: int) -> None:
        self._ours.add(identity)
        self._this_archive.add(identity)

    def _made(self, parent: int, name: str) -> None:
        self._own(identity_of(os.stat(name, dir_fd=parent, follow_symlinks=False)))

    # --- what is there ------------------------------------------------------------------

    def listing(self, parts: tuple[str, ...]) -> list[tuple[str, bool]]:
        """(name, is a folder) of what the folder `parts` holds; [] when it is not there."""
        try:
            fd = self._walk.folder(parts, create=False)
        except FileNotFoundError:
            return []
        with os.scandir(fd) as it:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]

    def owned(self, parts: tuple[str, ...]) -> bool | None:
        """Whether this restore made what is at `parts` (None: nothing is there)."""
        try:
            parent = self._walk.folder(parts[:-1], create=False)
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return identity_of(st) in self._ours

    # --- removing and renaming ----------------------------------------------------------

    def remove(self, parts: tuple[str, ...]) -> bool:
        """Remove what this restore made at `parts` and below; False when something there was
        not made by this restore (it stays, and so do the folders above it)."""
        try:
            parent = os.dup(self._walk.folder(parts[:-1], create=False))
        except FileNotFoundError:
            return True
        self._walk.forget()  # the cached folder may be the one removed
        try:
            gone = self._remove(parent, parts[-1])
        finally:
            os.close(parent)
        for key in [k for k in self._fixups if k[: len(parts)] == parts]:
            if not gone and (self.owned(key) is not None):
                continue
            del self._fixups[key]
        return gone

    def _remove(self, parent: int, name: str) -> bool:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return True
        identity = identity_of(st)
        ours = identity in self._ours
        if stat.S_ISDIR(st.st_mode):  # someone else's folder: what this restore put in it
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            try:
                with os.scandir(fd) as it:
                    names = [e.name for e in it]
                kept = [child for child in names if not self._remove(fd, child)]
            finally:
                os.close(fd)
            if kept or not ours:
                return False
            os.rmdir(name, dir_fd=parent)
        elif not ours:
            return False
        else:
            os.unlink(name, dir_fd=parent)
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            self._ours.discard(identity)
        return True

    def rename(self, source: tuple[str, ...], target: tuple[str, ...]) -> None:
        """Move what this restore made at `source` to `target` (making the folders above it),
        replacing what this restore made there; Refused says why not."""
        try:
            src_parent = os.dup(self._walk.folder(source[:-1], create=False))
        except FileNotFoundError:
            raise Refused(f"{_shown(source)!r} is not in the target folder") from None
        try:
            owned = self.owned(source)
            if owned is None:
                raise Refused(f"{_shown(source)!r} is not in the target folder")
            if not owned:
                raise Refused(f"{_shown(source)!r} was not made by this restore (not moved)")
            if self.owned(target) is False:
                raise Refused(f"{_shown(target)!r} {_EXISTS}")
            if not self.remove(target):
                raise Refused(f"{_shown(target)!r} holds files this restore did not create")
            dst_parent = self._walk.folder(target[:-1])
            os.rename(source[-1], target[-1], src_dir_fd=src_parent, dst_dir_fd=dst_parent)
        finally:
            os.close(src_parent)
        self._walk.forget()
        moved = {k: v for k, v in self._fixups.items() if k[: len(source)] == source}
        for key, fixup in moved.items():
            del self._fixups[key]
            new = target + key[len(source) :]
            self._fixups[new] = _DirFixup(new, fixup.mode, fixup.mtime_ns, fixup.identity)

    # --- members ------------------------------------------------------------------------

    def add(self, entry: Entry, data: IO[bytes] | None) -> bool:
        """Create `entry` now (True) or queue it for `end_archive` (False: a symlink)."""
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
        parent = self._walk.folder(entry.parts[:-1])
        name = entry.parts[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                self._claim(parent, name)  # a file an earlier archive made: replaced
                self._remove(parent, name)
                return self._mkdir(entry)
            if identity_of(st) in self._ours:  # made by an earlier archive: its newer mode/time
                self._fixups[entry.parts] = _DirFixup(
                    entry.parts, entry.mode, entry.mtime_ns, identity_of(st)
                )
            return  # merging into a folder that exists: its mode and times stay
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            identity = identity_of(os.fstat(fd))
        finally:
            os.close(fd)
        self._own(identity)
        self._fixups[entry.parts] = _DirFixup(entry.parts, entry.mode, entry.mtime_ns, identity)

    def _place(self, parent: int, temp: str, name: str) -> None:
        """Give the complete temporary `temp` its final name, over what `_claim` allowed."""
        if self._claim(parent, name):
            os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            return
        try:
            rename_noreplace(parent, temp, name)
        except FileExistsError:
            self._claim(parent, name)
            raise Refused(_EXISTS) from None

    def _write(self, entry: Entry, data: IO[bytes]) -> None:
        parent = self._walk.folder(entry.parts[:-1])
        name = entry.parts[-1]
        self._claim(parent, name)  # early, before copying the content
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
            finally:
                os.close(fd)
            self._place(parent, temp, name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=parent)
            raise
        self._made(parent, name)

    def _hard_link(self, entry: Entry) -> None:
        source = entry.link_parts
        try:
            source_parent = os.dup(self._walk.folder(source[:-1], create=False))
        except FileNotFoundError:
            raise Refused(_not_ours(entry.link)) from None
        try:
            try:
                st = os.stat(source[-1], dir_fd=source_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise Refused(_not_ours(entry.link)) from None
            if not stat.S_ISREG(st.st_mode) or identity_of(st) not in self._ours:
                raise Refused(_not_ours(entry.link))
            parent = self._walk.folder(entry.parts[:-1])
            temp = TEMP_PREFIX + secrets.token_hex(8)
            os.link(
                source[-1], temp, src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False
            )
            try:
                self._place(parent, temp, entry.parts[-1])
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=parent)
                raise
        finally:
            os.close(source_parent)

    # --- the end of an archive, and of the restore --------------------------------------

    def end_archive(self) -> tuple[list[Entry], list[tuple[Entry, str]]]:
        """Create the archive's queued symlinks; returns those (made, failed)."""
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
        self._this_archive.clear()
        return made, failed

    def finish(self) -> list[tuple[Entry, str]]:
        """Give folders their mode and times, deepest first; returns those that could not
        get them. Flushes the filesystem."""
        failed: list[tuple[Entry, str]] = []
        for parts in sorted(self._fixups, reverse=True):
            fixup = self._fixups[parts]
            problem = self._fix(fixup)
            if problem:
                failed.append((Entry(fixup.parts, "dir", fixup.mode, fixup.mtime_ns), problem))
        self._fixups.clear()
        self._walk.forget()
        syncfs(self._root)
        return failed

    def _symlink(self, entry: Entry) -> None:
        parent = self._walk.folder(entry.parts[:-1])
        name = entry.parts[-1]
        self._claim(parent, name)
        temp = TEMP_PREFIX + secrets.token_hex(8)
        os.symlink(entry.link, temp, dir_fd=parent)
        try:
            os.utime(
                temp, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False
            )
            self._place(parent, temp, name)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=parent)
            raise
        self._made(parent, name)

    def _fix(self, fixup: _DirFixup) -> str | None:
        try:
            parent = self._walk.folder(fixup.parts[:-1], create=False)
            fd = os.open(fixup.parts[-1], DIR_FLAGS, dir_fd=parent)
        except (OSError, Refused):
            return "folder disappeared or was replaced during the restore"
        try:
            if identity_of(os.fstat(fd)) != fixup.identity:
                return "folder was replaced during the restore"
            os.fchmod(fd, fixup.mode)
            os.utime(fd, ns=(fixup.mtime_ns, fixup.mtime_ns))
        except OSError as exc:
            return f"cannot set its mode or time: {exc.strerror}"
        finally:
            os.close(fd)
        return None
