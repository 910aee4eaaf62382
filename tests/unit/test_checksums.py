"""adler32 / md5 while bytes pass (hpcpilot.checksums), against zlib and hashlib."""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zlib

import pytest

from hpcpilot import checksums
from hpcpilot.accesspoint_writer import adler32_hex
from hpcpilot.checksums import (
    ChecksummingWriter,
    RunningChecksum,
    copy_with_checksum,
    file_checksum,
    matches,
)
from hpcpilot.jobs import Checksum

# Published adler32 values (RFC 1950 reference implementation), as 8 lower-case hex digits.
KNOWN_ADLER32 = [
    (b"", "00000001"),
    (b"a", "00620062"),
    (b"abc", "024d0127"),
    (b"Wikipedia", "11e60398"),
    (b"message digest", "29750586"),
    (b"abcdefghijklmnopqrstuvwxyz", "90860b20"),
]
KNOWN_MD5 = [
    (b"", "d41d8cd98f00b204e9800998ecf8427e"),
    (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
    (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
]


def zlib_adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


@pytest.mark.parametrize("data, expected", KNOWN_ADLER32)
def test_adler32_of_known_vectors(tmp_path, data, expected):
    source = tmp_path / "f"
    source.write_bytes(data)
    assert file_checksum(source).adler32 == expected == zlib_adler32(data)
    assert adler32_hex(data) == expected  # the access point writer agrees


@pytest.mark.parametrize("data, expected", KNOWN_MD5)
def test_md5_of_known_vectors(tmp_path, data, expected):
    source = tmp_path / "f"
    source.write_bytes(data)
    assert file_checksum(source, want_md5=True).md5 == expected == hashlib.md5(data).hexdigest()


def test_adler32_is_zero_padded_lower_case_hex():
    running = RunningChecksum()
    running.update(b"\x00")  # adler32 0x00010001
    assert running.adler32 == "00010001"
    running.update(b"\xff" * 1000)
    assert running.adler32 == running.adler32.lower() and len(running.adler32) == 8


@pytest.mark.parametrize("size", [1, 4095, 5552, 5553, 1 << 20])
def test_running_checksum_fed_in_pieces_equals_one_shot(size):
    data = random_bytes(size)
    running = RunningChecksum(want_md5=True)
    for start in range(0, size, 777):
        running.update(memoryview(data)[start:start + 777])
    assert running.size == size
    assert running.adler32 == zlib_adler32(data)
    assert running.md5 == hashlib.md5(data).hexdigest()
    assert running.value("adler32") == running.adler32 and running.value("md5") == running.md5


@pytest.mark.parametrize("size", [0, 1, 6, 7, 8, 13, 14, 15, 1000])
def test_copy_is_exact_across_chunk_boundaries(tmp_path, monkeypatch, size):
    # A 7-byte chunk makes every boundary case (empty, partial, exact multiple) cheap to reach.
    monkeypatch.setattr(checksums, "CHUNK_SIZE", 7)
    data = random_bytes(size)
    source = tmp_path / "in"
    source.write_bytes(data)
    target = io.BytesIO()
    running = copy_with_checksum(source, target, want_md5=True)
    assert target.getvalue() == data
    assert (running.size, running.adler32, running.md5) == (size, zlib_adler32(data), hashlib.md5(data).hexdigest())


def test_copy_of_a_file_larger_than_two_chunks_is_exact(tmp_path):
    size = 2 * checksums.CHUNK_SIZE + 12345
    data = random_bytes(size)
    source, copy = tmp_path / "in", tmp_path / "out"
    source.write_bytes(data)
    with open(copy, "wb") as target:
        running = copy_with_checksum(source, target, want_md5=True)
    assert copy.read_bytes() == data
    assert running.size == size
    assert running.adler32 == zlib_adler32(data)
    assert running.md5 == hashlib.md5(data).hexdigest()


def test_checksum_without_a_target_reads_only(tmp_path):
    source = tmp_path / "in"
    source.write_bytes(b"abc")
    running = copy_with_checksum(source, None)
    assert (running.size, running.adler32) == (3, "024d0127")
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_a_missing_source_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_checksum(tmp_path / "absent")


def test_checksumming_writer_sums_exactly_what_reaches_the_file(tmp_path):
    member = tmp_path / "payload.log"
    member.write_bytes(random_bytes(100_000))
    tarball = tmp_path / "log.1001.job.log.tgz"
    with open(tarball, "wb") as raw:
        writer = ChecksummingWriter(raw)
        with tarfile.open(fileobj=writer, mode="w:gz") as archive:
            archive.add(member, arcname=member.name)
        writer.flush()
    data = tarball.read_bytes()
    assert writer.checksum.size == len(data)
    assert writer.checksum.adler32 == zlib_adler32(data) == file_checksum(tarball).adler32
    with tarfile.open(tarball) as archive:
        assert archive.extractfile("payload.log").read() == member.read_bytes()


def test_matches_compares_with_the_declared_kind(tmp_path):
    source = tmp_path / "in"
    source.write_bytes(b"abc")
    running = file_checksum(source, want_md5=True)
    assert matches(running, None)
    assert matches(running, Checksum("adler32", "024d0127"))
    assert not matches(running, Checksum("adler32", "024d0128"))
    assert matches(running, Checksum("md5", "900150983cd24fb0d6963f7d28e17f72"))
    assert not matches(running, Checksum("md5", "0" * 32))
