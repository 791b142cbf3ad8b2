"""Recipients and identity files: what `age` accepts, and a bad line named by its number."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyrage
import pytest

from usbagent.errors import UsbagentError
from usbagent.recipients import (
    Ignored,
    load_identities,
    load_recipients,
    parse_identities,
    parse_recipients,
    read_recipients,
)


def ssh_key(tmp_path: Path, kind: str, passphrase: str = "") -> tuple[str, Path]:
    """A fresh OpenSSH key pair from the real ssh-keygen: (public line, private key path)."""
    key = tmp_path / f"id_{kind}{'_locked' if passphrase else ''}"
    bits = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *bits, "-N", passphrase, "-C", "me@host", "-f", str(key)],
        check=True,
    )
    return key.with_suffix(".pub").read_text().strip(), key


def round_trips(recipients: list[object], identities: list[object]) -> bool:
    return bool(pyrage.decrypt(pyrage.encrypt(b"probe", recipients), identities) == b"probe")


def test_every_supported_kind_with_comments_and_blank_lines(tmp_path: Path) -> None:
    age_id = pyrage.x25519.Identity.generate()
    ed_pub, ed_key = ssh_key(tmp_path, "ed25519")
    rsa_pub, rsa_key = ssh_key(tmp_path, "rsa")
    text = f"# backup keys\r\n\n{age_id.to_public()}\n{ed_pub}  \n# laptop (caf\xe9)\n{rsa_pub}\n"
    found = parse_recipients(text.encode("latin-1"), "r.txt")
    assert len(found.keys) == 3 and found.ignored == ()
    for identity in (age_id, *load_identities(ed_key), *load_identities(rsa_key)):
        assert round_trips(list(found.keys), [identity])


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("age1notakey", "not a valid age X25519 recipient"),
        ("ssh-ed25519 AAAAdamaged me@host", "not a valid ssh-ed25519 / ssh-rsa public key"),
        ("hello world", "expected an age key (age1…) or an ssh-ed25519 / ssh-rsa public key"),
        ("{good} # laptop", "text after the age1… key, which age refuses: put comments on"),
        ("\ufeff{good}", "starts with a byte-order mark, which age refuses: save the file"),
        ("  {good}", "starts with whitespace, which age refuses: remove it"),
        ("{good} ", "ends with whitespace, which age refuses: remove it"),
        ("age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3rhl3t", "plugin"),
    ],
)
def test_bad_line_is_named_by_file_and_number(tmp_path: Path, bad: str, says: str) -> None:
    good = pyrage.x25519.Identity.generate().to_public()
    path = tmp_path / "recipients"
    path.write_text(f"# header\n{good}\n\n{bad.format(good=good)}\n{good}\n")
    with pytest.raises(UsbagentError) as info:
        load_recipients(path)
    assert str(info.value).startswith(f"recipients file {path}, line 4: ")
    assert says in str(info.value)


def test_ssh_keys_age_cannot_use_are_skipped_with_a_warning_as_age_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ecdsa_pub, _ = ssh_key(tmp_path, "ecdsa")
    with pytest.raises(UsbagentError, match=r"holds no recipient \(1 ssh key\(s\) of a type age"):
        parse_recipients(ecdsa_pub.encode(), "r")
    good = pyrage.x25519.Identity.generate().to_public()
    path = tmp_path / "recipients"
    path.write_text(f"{ecdsa_pub}\n{good}\n")
    assert read_recipients(path).ignored == (Ignored(1, "ecdsa-sha2-nistp256"),)
    assert len(load_recipients(path)) == 1
    assert f"recipients file {path}, line 1: ssh key of type ecdsa-sha2-nistp256 ignored" in (
        caplog.text
    )


def test_a_secret_key_in_the_recipients_file_is_refused_without_echoing_it() -> None:
    secret = str(pyrage.x25519.Identity.generate())
    with pytest.raises(UsbagentError) as info:
        parse_recipients(f"{secret}\n".encode(), "r")
    assert "line 1: this is a secret key" in str(info.value)
    assert secret not in str(info.value)


def test_missing_empty_and_folder(tmp_path: Path) -> None:
    with pytest.raises(UsbagentError, match="does not exist"):
        load_recipients(tmp_path / "absent")
    (tmp_path / "empty").write_text("# only a comment\n\n")
    with pytest.raises(UsbagentError, match="holds no recipient"):
        load_recipients(tmp_path / "empty")
    with pytest.raises(UsbagentError, match="is a folder"):
        load_recipients(tmp_path)


def test_age_identity_file_as_age_keygen_writes_it(tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    identities = load_identities(key)
    assert round_trips(list(parse_recipients(public.encode(), "r").keys), identities)


def test_identity_problems_never_echo_key_material(tmp_path: Path) -> None:
    secret = str(pyrage.x25519.Identity.generate())
    with pytest.raises(UsbagentError) as info:
        parse_identities(f"# key\n{secret}\n{secret[:-3]}xyz\n".encode(), "k")
    assert "identity k, line 3: not an age secret key" in str(info.value)
    assert secret[:30] not in str(info.value)
    with pytest.raises(UsbagentError, match="holds no key"):
        parse_identities(b"# nothing\n", "k")
    with pytest.raises(UsbagentError, match="does not exist"):
        load_identities(tmp_path / "absent")


def test_passphrase_protected_ssh_key_says_what_to_do(tmp_path: Path) -> None:
    _, locked = ssh_key(tmp_path, "ed25519", passphrase="secret")
    with pytest.raises(UsbagentError, match="remove the passphrase"):
        load_identities(locked)
