"""Redacting secrets in the files that go into the log tarball: only the pilot's regular files in scratch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcpilot.redaction import REDACTED, redact_files

SECRET = "s3cr3t-token"


def test_secrets_are_blanked_in_regular_files(tmp_path: Path) -> None:
    (tmp_path / "payload.stdout").write_text(f"line one {SECRET}\nline two\n{SECRET}{SECRET}")
    redact_files(tmp_path, ["payload.stdout", "missing"], (SECRET,))
    assert (tmp_path / "payload.stdout").read_text() == f"line one {REDACTED}\nline two\n{REDACTED}{REDACTED}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["payload.stdout"]


@pytest.mark.timeout(10)
def test_a_fifo_left_by_the_payload_is_not_waited_on(tmp_path: Path) -> None:
    (tmp_path / "payload.stdout").write_text(SECRET)
    os.mkfifo(tmp_path / "payload.stdout.redacted")  # where a fixed temp name would be: opening it would block
    os.mkfifo(tmp_path / "payload.stderr")
    redact_files(tmp_path, ["payload.stdout", "payload.stderr"], (SECRET,))
    assert (tmp_path / "payload.stdout").read_text() == REDACTED


def test_a_symlink_left_by_the_payload_is_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text(f"precious {SECRET}")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "payload.stdout").symlink_to(victim)
    redact_files(scratch, ["payload.stdout"], (SECRET,))
    assert victim.read_text() == f"precious {SECRET}" and (scratch / "payload.stdout").is_symlink()


def test_a_scratch_replaced_by_a_symlink_is_left_alone(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "payload.stdout").write_text(f"not the pilot's {SECRET}")
    (tmp_path / "scratch").symlink_to(elsewhere)
    redact_files(tmp_path / "scratch", ["payload.stdout"], (SECRET,))
    assert (elsewhere / "payload.stdout").read_text() == f"not the pilot's {SECRET}"
