"""The log tarball writer (hpcpilot.logtarball): what tar and Python's tarfile read back, byte for byte."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from hpcpilot.logtarball import TarballError, ustar_header, write_tarball


def packed(tmp_path, files: dict[str, bytes]) -> bytes:
    members = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        members.append((str(tmp_path / name), f"log.42/{name}"))
    out = io.BytesIO()
    write_tarball(out, members)
    return out.getvalue()


def test_members_read_back_exactly(tmp_path):
    files = {"payload.stdout": os.urandom(70_000), "pilot.log": b"one line\n", "empty": b"",
             "block": b"x" * 512}
    with tarfile.open(fileobj=io.BytesIO(packed(tmp_path, files)), mode="r:gz") as archive:
        assert archive.getnames() == [f"log.42/{name}" for name in files]
        for name, data in files.items():
            member = archive.getmember(f"log.42/{name}")
            assert member.isreg() and member.size == len(data)
            assert archive.extractfile(member).read() == data


def test_members_from_memory_follow_the_files_and_gnu_tar_extracts_them(tmp_path):
    (tmp_path / "payload.stdout").write_bytes(b"out\n")
    texts = {"pilot.log": b"2026 [0@vm] INFO job 42: finished\n", "jobReport.json": b"{}", "empty": b""}
    tarball = tmp_path / "log.tgz"
    with open(tarball, "wb") as out:
        write_tarball(out, [(str(tmp_path / "payload.stdout"), "log.42/payload.stdout")],
                      in_memory=[(f"log.42/{name}", data) for name, data in texts.items()])
    with tarfile.open(tarball, mode="r:gz") as archive:
        assert archive.getnames() == ["log.42/payload.stdout", *(f"log.42/{name}" for name in texts)]
        assert all(archive.getmember(f"log.42/{name}").mode == 0o644 for name in texts)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    result = subprocess.run(["tar", "xzf", str(tarball), "-C", str(unpacked)], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert {name: (unpacked / "log.42" / name).read_bytes() for name in texts} == texts


def test_gnu_tar_lists_it(tmp_path):
    tarball = tmp_path / "log.tgz"
    tarball.write_bytes(packed(tmp_path, {"payload.stderr": b"warning\n"}))
    listing = subprocess.run(["tar", "tzvf", str(tarball)], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert "log.42/payload.stderr" in listing.stdout


def test_a_symlink_member_is_refused_not_followed(tmp_path):
    (tmp_path / "secret").write_bytes(b"host file")
    (tmp_path / "pilot.log").symlink_to(tmp_path / "secret")
    with pytest.raises(OSError):
        write_tarball(io.BytesIO(), [(str(tmp_path / "pilot.log"), "log.42/pilot.log")])


def test_a_fifo_member_is_left_out_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "pilot.log").write_bytes(b"ok")
    out = io.BytesIO()
    write_tarball(out, [(str(tmp_path / "pipe"), "log.42/pipe"), (str(tmp_path / "pilot.log"), "log.42/pilot.log")])
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as archive:
        assert archive.getnames() == ["log.42/pilot.log"]


def test_a_size_beyond_the_octal_field_takes_the_base256_form():
    header = ustar_header("log.1/huge", 9 * 1024 ** 3, 0, 0o644)
    assert tarfile.TarInfo.frombuf(header, "utf-8", "strict").size == 9 * 1024 ** 3


def test_a_name_too_long_for_the_header_is_an_error():
    with pytest.raises(TarballError):
        ustar_header("log.1/" + "x" * 100, 1, 0, 0o644)
