"""The log tarball writer (hpcpilot.logtarball): what tar and Python's tarfile read back, byte for byte."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zlib

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


def test_the_bytes_are_the_level_6_gzip_of_the_tar_stream_however_it_was_fed(tmp_path):
    """The writer hands zlib pieces of its own cutting (headers, file chunks, padding) and writes only what
    comes out: the tarball must be what one-shot compression of the whole tar stream gives, so that how the
    pieces are cut never changes a byte Harvester stages out."""
    files = {"payload.stdout": os.urandom(1_300_000) + b"tail\n" * 5000, "payload.stderr": b"",
             "zeros": bytes(70_000), "odd": b"x" * 513}
    tarball = packed(tmp_path, files)
    assert tarball == zlib.compress(zlib.decompress(tarball, 31), 6, wbits=31)


def test_a_header_checksum_is_what_tarfile_computes():
    header = ustar_header("log.42/payload.stdout", 1234, 1_700_000_000, 0o100640)
    assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").chksum == tarfile.calc_chksums(header)[0]
    assert int(header[148:154], 8) == sum(header[:148]) + 8 * ord(" ") + sum(header[156:])


def test_gnu_tar_lists_it(tmp_path):
    tarball = tmp_path / "log.tgz"
    tarball.write_bytes(packed(tmp_path, {"payload.stderr": b"warning\n"}))
    listing = subprocess.run(["tar", "tzvf", str(tarball)], capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert "log.42/payload.stderr" in listing.stdout


def test_a_symlink_member_is_left_out_not_followed(tmp_path):
    (tmp_path / "secret").write_bytes(b"host file")
    (tmp_path / "pilot.log").symlink_to(tmp_path / "secret")
    out = io.BytesIO()
    write_tarball(out, [(str(tmp_path / "pilot.log"), "log.42/pilot.log")])
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as archive:
        assert archive.getnames() == []


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


def test_a_file_dated_beyond_year_4147_keeps_the_archive_whole(tmp_path):
    """11 octal digits end in 4147; a later mtime (tmpfs takes it) is clamped, never a 513-byte header."""
    assert len(ustar_header("a", 3, 8 ** 12, 0o644)) == 512
    (tmp_path / "late").write_bytes(b"late")
    os.utime(tmp_path / "late", (8 ** 12, 8 ** 12))
    (tmp_path / "next").write_bytes(b"next")
    out = io.BytesIO()
    write_tarball(out, [(str(tmp_path / "late"), "log.42/late"), (str(tmp_path / "next"), "log.42/next")])
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as archive:
        assert [archive.extractfile(name).read() for name in ("log.42/late", "log.42/next")] == [b"late", b"next"]
        assert archive.getmember("log.42/late").mtime == 8 ** 11 - 1


def test_members_never_carry_setuid_setgid_or_others_write(tmp_path):
    """A payload chooses its stdout's mode: extracted as root, it must not become a setuid-root file."""
    (tmp_path / "payload.stdout").write_bytes(b"#!/bin/sh\n")
    os.chmod(tmp_path / "payload.stdout", 0o6777)
    out = io.BytesIO()
    write_tarball(out, [(str(tmp_path / "payload.stdout"), "log.42/payload.stdout")])
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:gz") as archive:
        assert archive.getmember("log.42/payload.stdout").mode == 0o755


@pytest.mark.timeout(60)
def test_a_member_the_pilot_cannot_open_is_left_out_not_the_archive(tmp_path):
    """The payload made its stdout unreadable; a pilot without root's override cannot open it."""
    (tmp_path / "payload.stdout").write_bytes(b"secret-ish")
    os.chmod(tmp_path / "payload.stdout", 0)
    (tmp_path / "pilot.log").write_bytes(b"log")
    script = ("import io, sys, tarfile; from hpcpilot.logtarball import write_tarball; out = io.BytesIO(); "
              "write_tarball(out, [(sys.argv[1] + '/payload.stdout', 'log.42/payload.stdout'), "
              "(sys.argv[1] + '/pilot.log', 'log.42/pilot.log')]); "
              "print(*tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode='r:gz').getnames())")
    run = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", script,
                          str(tmp_path)], capture_output=True, text=True, timeout=50)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["log.42/pilot.log"]
    assert "payload.stdout left out of the log tarball: Permission denied" in run.stderr
