"""Keys: recipients (public keys archives are encrypted to) and identities (private keys).

A recipients file holds one key per line, in the formats `age -R` accepts: an age X25519
key (`age1…`), or an OpenSSH public key line (`ssh-ed25519 …` / `ssh-rsa …`, comment
allowed). Blank lines and `#` comments are ignored. A line that is none of these stops the
archive before any work, naming the file and the line: a typo must never silently drop a
recipient, or the nightly archive would be readable by fewer people than intended.

An identity file is either an age identity file (`AGE-SECRET-KEY-1…` lines, as written by
`age-keygen`) or an unencrypted OpenSSH private key. Error messages never echo key
material.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

import pyrage

from usbagent.errors import UsbagentError

# pyrage ships no type information; the aliases say what the values are.
Recipient: TypeAlias = Any  # pyrage.x25519.Recipient | pyrage.ssh.Recipient
Identity: TypeAlias = Any  # pyrage.x25519.Identity | pyrage.ssh.Identity

SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_SECRET_PREFIX = "AGE-SECRET-KEY-"
_EXPECTED = "expected an age key (age1…) or an ssh-ed25519 / ssh-rsa public key"


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


def _parse_recipient(line: str) -> Recipient:
    """One non-comment line -> a recipient; ValueError says what is wrong with it."""
    kind = line.split(maxsplit=1)[0]
    if line.startswith(_SECRET_PREFIX):
        raise ValueError(
            "this is a secret key, not a recipient; put its public key here "
            "(age-keygen -y KEYFILE prints it)"
        )
    if kind.startswith("age1"):
        try:
            return pyrage.x25519.Recipient.from_str(kind)
        except pyrage.RecipientError:
            raise ValueError(f"not a valid age X25519 recipient ({_EXPECTED})") from None
    if kind in SSH_TYPES:
        try:
            return pyrage.ssh.Recipient.from_str(line)
        except pyrage.RecipientError:
            raise ValueError(f"not a valid {kind} public key (the key data is damaged)") from None
    if kind.startswith(("ssh-", "ecdsa-", "sk-")):
        raise ValueError(
            f"ssh key type {kind} is not supported by age (use ssh-ed25519 or ssh-rsa)"
        )
    raise ValueError(_EXPECTED)


def parse_recipients(text: str, source: str) -> list[Recipient]:
    """Every recipient in `text`; UsbagentError names `source` and the first bad line."""
    recipients: list[Recipient] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            recipients.append(_parse_recipient(line))
        except ValueError as exc:
            raise UsbagentError(f"recipients file {source}, line {number}: {exc}") from None
    if not recipients:
        raise UsbagentError(
            f"recipients file {source} holds no recipient (add an age1… or ssh-ed25519 key)"
        )
    return recipients


def load_recipients(path: Path) -> list[Recipient]:
    """The recipients in the file at `path` (missing, unreadable, empty and bad lines fail)."""
    fix = "put your age1… or ssh public key in it, or fix archive.recipients_file"
    data = _read(path, "recipients file", fix)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsbagentError(f"recipients file {path} is not a text file") from None
    return parse_recipients(text, str(path))


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
