"""usbagent reads a recipients file exactly as the real `age -R FILE` does (Debian's age).

For each sample file, usbagent's verdict (load_recipients succeeds) must equal age's verdict
(`age -R FILE` encrypting to it exits 0). The samples are the ways such files really go
wrong: a BOM from a Windows editor, CRLF, a comment after the key, Latin-1 in a comment,
stray whitespace, keys age skips, age's line limits.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyrage
import pytest

from usbagent.errors import UsbagentError
from usbagent.recipients import load_recipients

AGE = shutil.which("age")


@dataclass(frozen=True)
class Keys:
    age1: str
    age2: str
    ed25519: str
    rsa: str
    rsa1024: str
    ecdsa: str


def ssh_public(folder: Path, kind: str, *bits: str) -> str:
    key = folder / f"id_{kind}{''.join(bits)}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", "me@host", "-f", str(key)],
        check=True,
    )
    return key.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    folder = tmp_path_factory.mktemp("keys")
    yield Keys(
        age1=str(pyrage.x25519.Identity.generate().to_public()),
        age2=str(pyrage.x25519.Identity.generate().to_public()),
        ed25519=ssh_public(folder, "ed25519"),
        rsa=ssh_public(folder, "rsa", "-b", "2048"),
        rsa1024=ssh_public(folder, "rsa", "-b", "1024"),
        ecdsa=ssh_public(folder, "ecdsa"),
    )


def samples(k: Keys) -> dict[str, bytes]:
    a, b = k.age1.encode(), k.age2.encode()
    ed_type, ed_b64 = k.ed25519.encode().split()[:2]
    ed = k.ed25519.encode()
    damaged_ed = (
        ed_type + b" " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"\xff" * 32)
    )
    cert = b"ssh-ed25519-cert-v01@openssh.com " + base64.b64encode(
        b"\0\0\0\x20ssh-ed25519-cert-v01@openssh.com" + b"\0" * 8
    )
    return {
        "plain": a + b"\n",
        "no final newline": a,
        "two keys": a + b"\n" + b + b"\n",
        "blank lines": b"\n\n" + a + b"\n\n",
        "crlf": a + b"\r\n" + b + b"\r\n",
        "crlf blank line": b"\r\n" + a + b"\r\n",
        "lone cr between keys": a + b"\r" + b + b"\n",
        "two cr before newline": a + b"\r\r\n",
        "bom": b"\xef\xbb\xbf" + a + b"\n",
        "bom before a comment": b"\xef\xbb\xbf# keys\n" + a + b"\n",
        "utf-16": ("\ufeff" + k.age1 + "\n").encode("utf-16-le"),
        "comment": b"# me\n" + a + b"\n",
        "comment without space": b"#me\n" + a + b"\n",
        "latin-1 comment": b"# caf\xe9\n" + a + b"\n",
        "latin-1 after a key": a + b" \xe9\n",
        "comment with U+0085 and U+2028": a + "\n# x\u0085y\u2028z\n".encode(),
        "indented comment": b"  # me\n" + a + b"\n",
        "trailing comment": a + b" # me\n",
        "trailing comment no space": a + b"#me\n",
        "trailing space": a + b" \n",
        "trailing tab": a + b"\t\n",
        "leading space": b" " + a + b"\n",
        "whitespace-only line": b"   \n" + a + b"\n",
        "tab-only line": b"\t\n" + a + b"\n",
        "vertical tab between keys": a + b"\x0b" + b + b"\n",
        "nul after key": a + b"\0\n",
        "uppercase key": k.age1.upper().encode() + b"\n",
        "mixed-case key": a[:10] + a[10:11].upper() + a[11:] + b"\n",
        "key with nbsp after": a + "\u00a0".encode() + b"\n",
        "bare age1": b"age1\n",
        "bad checksum": a[:-1] + (b"q" if a[-1:] != b"q" else b"p") + b"\n",
        "secret key": str(pyrage.x25519.Identity.generate()).encode() + b"\n",
        "plugin recipient": b"age1yubikey1qwt50d05nh5vutpdzmlg5wn80xq5negm4uj9ghv0snvdd3yysf5yw3"
        b"rhl3t\n",
        "github": b"github:someone\n",
        "empty": b"",
        "only comments": b"# a\n# b\n",
        "only blank lines": b"\n\n",
        "ssh-ed25519": ed + b"\n",
        "ssh-ed25519 without comment": ed_type + b" " + ed_b64 + b"\n",
        "ssh-ed25519 tab separated": ed_type + b"\t" + ed_b64 + b"\n",
        "ssh-ed25519 two spaces": ed_type + b"  " + ed_b64 + b" c\n",
        "ssh-ed25519 trailing space": ed_type + b" " + ed_b64 + b" \n",
        "ssh-ed25519 trailing nbsp": ed_type + b" " + ed_b64 + "\u00a0".encode() + b"\n",
        "ssh-ed25519 cr inside": ed_type + b" " + ed_b64 + b"\rjunk\n",
        "ssh-ed25519 with options first": b'no-pty,command="x y" ' + ed + b"\n",
        "ssh- options field then key": b"ssh-opt ssh-ed25519 " + ed_b64 + b" c\n",
        "declared type differs from blob": b"ssh-rsa " + ed_b64 + b"\n",
        "unknown ssh- type word": b"ssh-foo " + ed_b64 + b"\n",
        "damaged ssh-ed25519 base64": ed_type + b" " + ed_b64[:-8] + b"\n",
        "invalid ed25519 point alone": damaged_ed + b"\n",
        "invalid ed25519 point with age key": damaged_ed + b"\n" + a + b"\n",
        "ssh certificate with age key": cert + b"\n" + a + b"\n",
        "ssh-rsa 2048": k.rsa.encode() + b"\n",
        "ssh-rsa 1024 alone": k.rsa1024.encode() + b"\n",
        "ssh-rsa 1024 with age key": k.rsa1024.encode() + b"\n" + a + b"\n",
        "ecdsa alone": k.ecdsa.encode() + b"\n",
        "ecdsa with age key": k.ecdsa.encode() + b"\n" + a + b"\n",
        "ecdsa with tab": k.ecdsa.encode().replace(b" ", b"\t", 1) + b"\n" + a + b"\n",
        "comment line of 65535 bytes": b"#" + b"x" * 65534 + b"\n" + a + b"\n",
        "comment line of 65536 bytes": b"#" + b"x" * 65535 + b"\n" + a + b"\n",
        "last line of 65535 bytes": a + b"\n#" + b"x" * 65534,
        "last line of 65536 bytes": a + b"\n#" + b"x" * 65535,
        "key line of 8192 bytes": a + b"\n" + ed + b" " + b"c" * (8192 - len(ed) - 1) + b"\n",
        "key line of 8193 bytes": a + b"\n" + ed + b" " + b"c" * (8193 - len(ed) - 1) + b"\n",
    }


def age_accepts(path: Path) -> bool:
    assert AGE is not None
    r = subprocess.run(
        [AGE, "-R", str(path), "-o", "/dev/null"], input=b"x", capture_output=True, timeout=30
    )
    return r.returncode == 0


def usbagent_accepts(path: Path) -> bool:
    try:
        load_recipients(path)
    except UsbagentError:
        return False
    return True


def test_usbagent_and_age_accept_and_refuse_the_same_recipients_files(
    keys: Keys, tmp_path: Path
) -> None:
    assert AGE is not None, "the age binary (Debian package age) is needed: see the Makefile"
    disagree = []
    verdicts = {}
    for name, data in samples(keys).items():
        path = tmp_path / name.replace(" ", "-")
        path.write_bytes(data)
        verdicts[name] = age_accepts(path)
        if usbagent_accepts(path) != verdicts[name]:
            disagree.append(f"{name}: age {'accepts' if verdicts[name] else 'refuses'}")
    assert not disagree, disagree
    # The corpus exercises both verdicts for each issue: the test cannot pass vacuously.
    assert verdicts["latin-1 comment"] and verdicts["crlf"] and verdicts["ecdsa with age key"]
    assert not verdicts["bom"] and not verdicts["trailing comment"]
    assert not verdicts["trailing space"] and not verdicts["ecdsa alone"]
