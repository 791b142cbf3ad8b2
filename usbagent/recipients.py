"""Keys: recipients (public keys archives are encrypted to) and identities (private keys).

A recipients file is read exactly as `age -R FILE` (age 1.1, Debian 12) reads it, so a file
usbagent accepts is one age accepts and the reverse; tests hold the two side by side:
- lines are split at "\n" only, and one "\r" before it is dropped (CRLF files work);
- a line that is empty or starts with "#" is skipped, whatever bytes follow the "#" (a
  Latin-1 comment is fine); nothing else is stripped: leading or trailing whitespace, a
  byte-order mark or a comment after a key make the line malformed, as they do for age;
- a line is an age X25519 key (`age1…`), or an OpenSSH public key line starting `ssh-`
  (`ssh-ed25519`, or `ssh-rsa` of 2048 bits or more; a comment after it is allowed);
- a valid OpenSSH key of another type (ecdsa, ssh-dss, short RSA, certificates) is skipped
  with a warning, as age skips it: that key cannot decrypt the archives, and `doctor`
  reports it;
- age's limits: a non-comment line over 8 KiB, or any line over 64 KiB, fails the file.
Anything else stops the archive before any work, naming the file and the line: a typo must
never silently drop a recipient. One deliberate difference: age reads only the first 16 MiB
of a file and silently ignores the rest; usbagent refuses such a file instead. Age plugin
recipients (`age1NAME1…`) are refused: the encryptor here cannot run plugins.

An identity file is either an age identity file (`AGE-SECRET-KEY-1…` lines, as written by
`age-keygen`) or an unencrypted OpenSSH private key. Error messages never echo key
material.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pyrage

from usbagent.errors import UsbagentError

log = logging.getLogger(__name__)

# pyrage ships no type information; the aliases say what the values are.
Recipient: TypeAlias = Any  # pyrage.x25519.Recipient | pyrage.ssh.Recipient
Identity: TypeAlias = Any  # pyrage.x25519.Identity | pyrage.ssh.Identity

_SECRET_PREFIX = b"AGE-SECRET-KEY-"
_EXPECTED = "expected an age key (age1…) or an ssh-ed25519 / ssh-rsa public key"
FILE_LIMIT = 16 << 20  # age reads this much of a recipients file
LINE_LIMIT = 8 << 10  # age's limit for a key line ("same as sshd(8)")
SCANNER_LIMIT = 64 * 1024 - 1  # Go's bufio.Scanner: a longer line fails the whole file
RSA_MIN_BYTES = 2048 // 8
# What Go's bytes.TrimSpace removes (unicode.IsSpace), which OpenSSH key parsing uses.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)


@dataclass(frozen=True)
class Ignored:
    """A valid OpenSSH public key age cannot encrypt to: skipped, with a warning."""

    line: int
    key_type: str


@dataclass(frozen=True)
class Recipients:
    keys: tuple[Recipient, ...]
    ignored: tuple[Ignored, ...]


def _read(path: Path, what: str, fix: str) -> bytes:
    """The file's bytes, or one line naming the file, what is wrong and (if missing) the fix."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsbagentError(f"{what} {path} does not exist ({fix})") from None
    except IsADirectoryError:
        raise UsbagentError(f"{what} {path} is a folder, not a file") from None
    except PermissionError:
        raise UsbagentError(f"{what} {path} is not readable by this user") from None
    except OSError as exc:
        raise UsbagentError(f"{what} {path} cannot be read: {exc.strerror}") from None


def _lines(data: bytes) -> list[bytes]:
    """Lines as age's bufio.Scanner yields them: split at "\n" only, one "\r" dropped."""
    raw = data.split(b"\n")
    if raw[-1] == b"":  # a final newline ends the last line; it does not start another
        raw.pop()
    return raw


def _go_trim(b: bytes) -> bytes:
    return b.decode("utf-8", "surrogateescape").strip(_GO_SPACE).encode("utf-8", "surrogateescape")


def _b64(word: bytes) -> bytes | None:
    """Go's base64.StdEncoding: padded, and "\r" / "\n" inside are ignored."""
    try:
        return base64.b64decode(word.replace(b"\r", b"").replace(b"\n", b""), validate=True)
    except (binascii.Error, ValueError):
        return None


def _ssh_strings(blob: bytes) -> list[bytes] | None:
    """The length-prefixed strings an SSH wire-format key is made of (None: malformed)."""
    out, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            return None
        (n,) = struct.unpack(">I", blob[at : at + 4])
        if at + 4 + n > len(blob):
            return None
        out.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def _usable_ssh_key(rest: bytes) -> tuple[str, bytes] | None:
    """(type, blob) of the key that starts `rest` ("BASE64 [comment]"), when it is one age
    encrypts to: ssh-ed25519, or ssh-rsa of at least 2048 bits."""
    word = _go_trim(rest)
    for sep in (b" ", b"\t"):
        word = word.split(sep, 1)[0]
    blob = _b64(word)
    parts = _ssh_strings(blob) if blob else None
    if not parts:
        return None
    kind = parts[0]
    if kind == b"ssh-ed25519" and len(parts) == 2 and len(parts[1]) == 32:
        return "ssh-ed25519", blob or b""
    if kind == b"ssh-rsa" and len(parts) == 3 and len(parts[2].lstrip(b"\0")) >= RSA_MIN_BYTES:
        return "ssh-rsa", blob or b""
    return None


def _first_field_end(line: bytes) -> int:
    """Where an OpenSSH options field ends: the first blank outside double quotes."""
    quoted = False
    for i, c in enumerate(line):
        if c in b" \t" and not quoted:
            return i
        if c == ord('"') and (i == 0 or line[i - 1] != ord("\\")):
            quoted = not quoted
    return -1


def _authorized_key(line: bytes) -> tuple[str, bytes] | None:
    """The key of an authorized_keys-style line, as Go's ssh.ParseAuthorizedKey (used by
    age) finds it: the type word is skipped and the blob says what the key is; failing
    that, the first field is taken for options."""
    text = _go_trim(line.split(b"\r", 1)[0])
    for _ in range(2):  # the line as is, then with a leading options field
        blank = min((i for i in (text.find(b" "), text.find(b"\t")) if i >= 0), default=-1)
        if blank < 0:
            return None
        found = _usable_ssh_key(text[blank:])
        if found:
            return found
        end = _first_field_end(text)
        if end < 0:
            return None
        text = text[end:].lstrip(b" \t")
    return None


def ssh_key_type(line: bytes) -> str | None:
    """The type of a valid-looking OpenSSH key line (what age skips rather than rejects)."""
    fields = line.split(b" ")
    blob = _b64(fields[1]) if len(fields) >= 2 else None
    if blob is None or len(blob) < 4:
        return None
    (n,) = struct.unpack(">I", blob[:4])
    if len(blob) < 4 + n or blob[4 : 4 + n] != fields[0]:
        return None
    return fields[0].decode("ascii", "replace")


def _hint(line: bytes) -> str:
    """What is wrong with a line age would reject, said so that the fix is obvious."""
    if line.startswith(_SECRET_PREFIX):
        return (
            "this is a secret key, not a recipient; put its public key here "
            "(age-keygen -y KEYFILE prints it)"
        )
    if line.startswith(b"\xef\xbb\xbf"):
        return "starts with a byte-order mark, which age refuses: save the file without BOM"
    if line[:1] in (b" ", b"\t"):
        return "starts with whitespace, which age refuses: remove it"
    if line.startswith(b"age1") and line.count(b"1") > 1 and b" " not in line:
        return "an age plugin recipient: usbagent cannot run age plugins"
    if line.startswith(b"age1") and b" " in line.rstrip(b" \t"):
        return (
            "text after the age1… key, which age refuses: put comments on their own line "
            "starting with #"
        )
    if line[-1:] in (b" ", b"\t"):
        return "ends with whitespace, which age refuses: remove it"
    if line.startswith(b"age1"):
        return f"not a valid age X25519 recipient ({_EXPECTED})"
    if line.startswith(b"ssh-"):
        return "not a valid ssh-ed25519 / ssh-rsa public key (the key data is damaged)"
    return _EXPECTED


def _parse_line(line: bytes) -> Recipient | None:
    """One key line -> a recipient, as age's parseRecipient; None when age would not."""
    try:
        if line.startswith(b"age1") and line.count(b"1") == 1:
            return pyrage.x25519.Recipient.from_str(line.decode("ascii"))
        if line.startswith(b"ssh-"):
            found = _authorized_key(line)
            if found is not None:
                kind, blob = found
                return pyrage.ssh.Recipient.from_str(f"{kind} {base64.b64encode(blob).decode()}")
    except (pyrage.RecipientError, UnicodeDecodeError):
        return None
    return None


def parse_recipients(data: bytes, source: str) -> Recipients:
    """Every recipient in a recipients file, read as `age -R` reads it (see module doc);
    UsbagentError names `source` and the first line age would refuse."""
    if len(data) > FILE_LIMIT:
        raise UsbagentError(
            f"recipients file {source} is larger than the {FILE_LIMIT >> 20} MiB age reads "
            "(age would silently ignore the rest): it cannot be a recipients file"
        )
    keys: list[Recipient] = []
    ignored: list[Ignored] = []
    for number, raw in enumerate(_lines(data), start=1):
        if len(raw) > SCANNER_LIMIT:
            raise UsbagentError(f"recipients file {source}, line {number} is longer than 64 KiB")
        line = raw.removesuffix(b"\r")
        if not line or line.startswith(b"#"):
            continue
        if len(line) > LINE_LIMIT:
            raise UsbagentError(f"recipients file {source}, line {number} is longer than 8 KiB")
        recipient = _parse_line(line)
        if recipient is not None:
            keys.append(recipient)
        elif (kind := ssh_key_type(line)) is not None:
            ignored.append(Ignored(number, kind))
        else:
            raise UsbagentError(f"recipients file {source}, line {number}: {_hint(line)}")
    if not keys:
        skipped = f" ({len(ignored)} ssh key(s) of a type age cannot use)" if ignored else ""
        raise UsbagentError(
            f"recipients file {source} holds no recipient{skipped} (add an age1… or "
            "ssh-ed25519 key)"
        )
    return Recipients(tuple(keys), tuple(ignored))


def describe_ignored(source: str, skipped: Ignored) -> str:
    return (
        f"recipients file {source}, line {skipped.line}: ssh key of type {skipped.key_type} "
        "ignored (age encrypts only to ssh-ed25519 and ssh-rsa of 2048+ bits): that key "
        "cannot decrypt the archives"
    )


def read_recipients(path: Path) -> Recipients:
    """The recipients file at `path` (missing, unreadable, empty and bad lines fail)."""
    fix = "put your age1… or ssh public key in it, or fix archive.recipients_file"
    return parse_recipients(_read(path, "recipients file", fix), str(path))


def load_recipients(path: Path) -> list[Recipient]:
    """The recipients to encrypt to; keys age skips are skipped with a warning, as age does."""
    found = read_recipients(path)
    for skipped in found.ignored:
        log.warning("%s", describe_ignored(str(path), skipped))
    return list(found.keys)


def parse_identities(data: bytes, source: str) -> list[Identity]:
    """Identities from an age identity file or an OpenSSH private key; never echoes keys."""
    if b"-----BEGIN" in data:
        try:
            return [pyrage.ssh.Identity.from_buffer(data)]
        except pyrage.IdentityError as exc:
            hint = (
                "remove the passphrase from a copy (ssh-keygen -p) or use an age identity"
                if "decrypted" in str(exc)
                else "use an unencrypted ssh-ed25519/ssh-rsa key or an age identity"
            )
            raise UsbagentError(f"identity {source}: ssh key not usable ({exc}); {hint}") from None
    if data.startswith(b"age-encryption.org/"):
        raise UsbagentError(
            f"identity {source} is itself encrypted (passphrase-protected); "
            "decrypt it to a private file first"
        )
    identities: list[Identity] = []
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise UsbagentError(
                f"identity {source}, line {number}: not an age secret key (AGE-SECRET-KEY-1…)"
            ) from None
    if not identities:
        raise UsbagentError(f"identity {source} holds no key")
    return identities


def load_identities(path: Path) -> list[Identity]:
    """The identities in the file at `path`."""
    fix = "give the age or ssh secret key with --identity or archive.identity_file"
    return parse_identities(_read(path, "identity", fix), str(path))
