"""Where the age identity (private key) for verify and restore drills comes from.

systemd can hand a service its secrets as credentials (LoadCredential= or, encrypted at
rest with the TPM/host key, LoadCredentialEncrypted=); they appear as files in
$CREDENTIALS_DIRECTORY, readable only by that service, on a non-swappable ramfs. Such a
credential wins over the plain `archive.identity_file`, so the key need not lie on disk in
the clear. The credential is named like the configured file (its basename), or
"age-identity" when no file is configured:

    LoadCredentialEncrypted=age-identity:/etc/credstore.encrypted/age-identity
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from usbagent.config import Config

CREDENTIAL_NAME = "age-identity"


def identity_path(config: Config, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The identity to use: a systemd credential if present, else archive.identity_file.

    None means no identity is configured at all (verify then checks checksums only).
    """
    configured = config.archive.identity_file
    folder = environ.get("CREDENTIALS_DIRECTORY")
    if folder:
        names = [configured.name] if configured else []
        for name in [*names, CREDENTIAL_NAME]:
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    return configured
