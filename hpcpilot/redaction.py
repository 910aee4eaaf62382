"""Keeping a job's secrets (values of pilotSecrets and configured fields) out of logs, reports and tarballs."""
from __future__ import annotations

import os
from pathlib import Path

REDACTED = "***"


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def redact_files(scratch: Path, names: list[str], secrets: tuple[str, ...]) -> None:
    """Blank the job's secrets in files that go into the log tarball (line by line: stdout can be large)."""
    if not secrets:
        return
    encoded = [(secret.encode(), REDACTED.encode()) for secret in secrets]
    for name in names:
        path = scratch / name
        if not path.is_file() or path.is_symlink():
            continue
        redacted = path.with_name(path.name + ".redacted")
        with open(path, "rb") as source, open(redacted, "wb") as target:
            for line in source:
                for secret, mask in encoded:
                    line = line.replace(secret, mask)
                target.write(line)
        os.replace(redacted, path)
