"""Redacting secrets in the files that go into the log tarball: only the pilot's regular files in scratch."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpilot.redaction import REDACTED, copy_redacted, redact, redact_files, rewrite_json

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


def test_a_secret_spanning_lines_is_blanked(tmp_path: Path) -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----"
    (tmp_path / "payload.stdout").write_text(f"using\n{key}\ndone\n")
    redact_files(tmp_path, ["payload.stdout"], (key,))
    assert (tmp_path / "payload.stdout").read_text() == f"using\n{REDACTED}\ndone\n"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8, 13, 1 << 20])
def test_chunks_give_what_one_pass_over_the_whole_file_gives(chunk_size: int) -> None:
    secrets = [b"tok-12345", b"abcd", b"12345-tail"]
    text = b"xtok-12345tok-12345abcdabc\nd12345-tail tok-1234 abcdtok-12345-tail\n" * 3
    target = io.BytesIO()
    copy_redacted(io.BytesIO(text), target, secrets, chunk_size=chunk_size)
    expected = text.replace(b"tok-12345", b"***").replace(b"12345-tail", b"***").replace(b"abcd", b"***")
    assert target.getvalue() == expected


@pytest.mark.timeout(60)
def test_a_long_line_is_not_read_whole(tmp_path: Path) -> None:
    """A line of 64 MiB without a newline: redaction holds a chunk at a time (a 1 GiB line would not fit).
    Measured in a fresh process, whose peak RSS nothing else has raised."""
    path = tmp_path / "payload.stdout"
    with open(path, "wb") as handle:
        for _ in range(64):
            handle.write(b"y" * (1 << 20))
        handle.write(SECRET.encode())
    script = ("import resource, sys; from pathlib import Path; from hpcpilot.redaction import redact_files; "
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
              f"redact_files(Path(sys.argv[1]), ['payload.stdout'], ({SECRET!r},)); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)")
    grown_kib = int(subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                                   check=True, timeout=50).stdout)
    assert path.read_bytes()[-10:] == b"y" * 7 + REDACTED.encode()
    assert grown_kib < 32 * 1024


def test_json_is_redacted_in_its_decoded_strings_keys_and_numbers() -> None:
    """JSON text escapes quotes, backslashes, newlines and non-ASCII: the secret is sought in what it decodes to."""
    secret = 'pä"ss\\wo\nrd'
    report = {"argv": f"--key {secret}", secret: [1, {"deep": secret}], "pin": 12345678, "ok": True, "n": None}
    assert json.dumps(report).find(secret) == -1  # what a search of the encoded text would miss
    redacted = rewrite_json(report, lambda text: redact(text, (secret, "2345")))
    assert redacted == {"argv": f"--key {REDACTED}", REDACTED: [1, {"deep": REDACTED}], "pin": REDACTED,
                        "ok": True, "n": None}
