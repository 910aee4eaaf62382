"""adler32 / md5 while bytes pass (hpcpilot.checksums), against zlib and hashlib."""
from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import io
import os
import subprocess
import tarfile
import threading
import time
import weakref
import zlib
from pathlib import Path

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
from tests.threadless import run_without_threads

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


# -- kernel copies (copy_file_range / sendfile / read-write, checksummed behind the copier) -------------------

def _orders(tmp_path, sizes, want_md5=False):
    """Sources of the given sizes in ``src/``, targets to be created in ``dst/``."""
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    orders, contents = [], []
    for index, size in enumerate(sizes):
        data = random_bytes(size)
        source = tmp_path / "src" / f"f{index}"
        source.write_bytes(data)
        orders.append(checksums.CopyOrder(source, tmp_path / "dst" / f"f{index}", want_md5))
        contents.append(data)
    return orders, contents


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk", [7, 4096, 4 * 1024 * 1024])
def test_kernel_copies_are_exact_and_summed(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(checksums, "KERNEL_CHUNK_SIZE", chunk)
    orders, contents = _orders(tmp_path, [0, 1, 6, 7, 8, 13, 14, 100_000], want_md5=True)
    results = list(checksums.copy_files_with_checksums(orders))
    assert len(results) == len(orders)
    for order, data, running in zip(orders, contents, results):
        assert order.target.read_bytes() == data
        assert (running.size, running.adler32, running.md5) == (len(data), zlib_adler32(data),
                                                                hashlib.md5(data).hexdigest())


@pytest.mark.timeout(60)
def test_kernel_copy_of_files_larger_than_a_chunk(tmp_path):
    orders, contents = _orders(tmp_path, [2 * checksums.KERNEL_CHUNK_SIZE + 12345, checksums.KERNEL_CHUNK_SIZE])
    for order, data, running in zip(orders, contents, checksums.copy_files_with_checksums(orders)):
        assert order.target.read_bytes() == data
        assert (running.size, running.adler32) == (len(data), zlib_adler32(data))


@pytest.mark.timeout(60)
def test_kernel_copy_error_comes_in_order_and_later_files_are_not_left(tmp_path, monkeypatch):
    monkeypatch.setattr(checksums, "KERNEL_CHUNK_SIZE", 1000)
    orders, contents = _orders(tmp_path, [5000, 5000, 5000, 5000])
    orders[2].source.unlink()
    copied = checksums.copy_files_with_checksums(orders)
    assert next(copied).adler32 == zlib_adler32(contents[0])
    assert next(copied).adler32 == zlib_adler32(contents[1])
    with pytest.raises(checksums.CopyFailed) as failure:
        next(copied)
    assert failure.value.order == orders[2]
    assert isinstance(failure.value.error, FileNotFoundError)
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["f0", "f1"]


@pytest.mark.timeout(60)
def test_an_error_raised_by_the_orders_comes_at_its_place(tmp_path):
    orders, contents = _orders(tmp_path, [3000, 3000])

    def resolved():
        yield orders[0]
        raise LookupError("replica of the second file is not there")

    copied = checksums.copy_files_with_checksums(resolved())
    assert next(copied).adler32 == zlib_adler32(contents[0])
    with pytest.raises(LookupError, match="second file"):
        next(copied)


@pytest.mark.timeout(60)
def test_stopping_early_removes_the_targets_not_handed_out(tmp_path, monkeypatch):
    monkeypatch.setattr(checksums, "KERNEL_CHUNK_SIZE", 4096)
    orders, contents = _orders(tmp_path, [50_000] * 8)
    threads_before = threading.active_count()
    copied = checksums.copy_files_with_checksums(orders)
    next(copied)
    copied.close()
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["f0"]
    assert (tmp_path / "dst" / "f0").read_bytes() == contents[0]
    assert threading.active_count() == threads_before  # the copier has ended


@pytest.mark.timeout(60)
def test_an_existing_target_is_refused_and_kept(tmp_path):
    orders, _ = _orders(tmp_path, [100])
    orders[0].target.write_bytes(b"already here")
    with pytest.raises(checksums.CopyFailed) as failure:
        list(checksums.copy_files_with_checksums(orders))
    assert isinstance(failure.value.error, FileExistsError)
    assert orders[0].target.read_bytes() == b"already here"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make", [lambda path: path.symlink_to("/dev/zero"), os.mkfifo, os.mkdir],
                         ids=["endless-device", "fifo-without-writer", "directory"])
def test_a_source_that_is_no_regular_file_is_refused(tmp_path, make):
    """Refused as the kernel copy refuses it, whatever size was declared: the fallbacks would read a device
    without end, or wait on a FIFO."""
    (tmp_path / "dst").mkdir()
    make(tmp_path / "src")
    order = checksums.CopyOrder(tmp_path / "src", tmp_path / "dst" / "copy", size=1000)
    with pytest.raises(checksums.CopyFailed) as failure:
        list(checksums.copy_files_with_checksums([order]))
    assert isinstance(failure.value.error, checksums.NotRegularFile)
    assert list((tmp_path / "dst").iterdir()) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("declared", [None, 10, 5000, 10**9], ids=["unknown", "smaller", "exact", "larger"])
def test_a_declared_size_never_changes_what_is_copied(tmp_path, declared):
    orders, contents = _orders(tmp_path, [5000])
    order = checksums.CopyOrder(orders[0].source, orders[0].target, size=declared)
    (running,) = checksums.copy_files_with_checksums([order])
    assert order.target.read_bytes() == contents[0] and running.size == 5000


@pytest.mark.timeout(60)
def test_kernel_copy_across_filesystems(tmp_path):
    """tmpfs to the test directory: copy_file_range may refuse (EXDEV), the fallback copies."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    data = random_bytes(3 * 1024 * 1024 + 5)
    source = shm / f"hpcpilot-test-{os.getpid()}"
    source.write_bytes(data)
    try:
        order = checksums.CopyOrder(source, tmp_path / "copy")
        (running,) = checksums.copy_files_with_checksums([order])
    finally:
        source.unlink()
    assert order.target.read_bytes() == data and running.adler32 == zlib_adler32(data)


@pytest.mark.timeout(60)
def test_full_disk_removes_the_partial_copy(tmp_path):
    """A real 1 MiB tmpfs as target: ENOSPC comes back as CopyFailed and nothing half-copied is left."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
    try:
        source = tmp_path / "big"
        source.write_bytes(random_bytes(3 * 1024 * 1024))
        order = checksums.CopyOrder(source, mount_point / "big")
        with pytest.raises(checksums.CopyFailed) as failure:
            list(checksums.copy_files_with_checksums([order]))
        assert failure.value.error.errno == errno.ENOSPC
        assert list(mount_point.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024 + 3])
def test_copy_into_a_descriptor_sums_the_bytes_published(tmp_path, size):
    data = random_bytes(size)
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(data)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        running = checksums.copy_into_with_checksum(source, fd, want_md5=True)
    finally:
        os.close(fd)
    assert target.read_bytes() == data
    assert (running.size, running.adler32, running.md5) == (size, zlib_adler32(data), hashlib.md5(data).hexdigest())


@pytest.mark.timeout(60)
def test_copy_into_a_descriptor_of_a_source_growing_meanwhile(tmp_path, monkeypatch):
    """Whatever the copy catches of a file being appended to, the sum is the sum of what was published."""
    monkeypatch.setattr(checksums, "KERNEL_CHUNK_SIZE", 4096)
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(random_bytes(2 * 1024 * 1024))
    stop = threading.Event()

    def append() -> None:
        with open(source, "ab", buffering=0) as handle:
            for _ in range(4000):  # bounded, so that the copy catches up with the end
                if stop.is_set():
                    return
                handle.write(random_bytes(1000))

    writer = threading.Thread(target=append)
    writer.start()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            running = checksums.copy_into_with_checksum(source, fd)
        finally:
            os.close(fd)
    finally:
        stop.set()
        writer.join()
    published = target.read_bytes()
    assert (running.size, running.adler32) == (len(published), zlib_adler32(published))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("swap", ["symlink", "fifo"])
def test_copy_into_never_follows_a_symlink_nor_waits_on_a_fifo(tmp_path, swap):
    """What stands at the name when the copy opens it may not be what the pilot checked: a payload can swap
    a symlink to a host file, or a FIFO nobody writes, in between."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"host file")
    source = tmp_path / "out"
    if swap == "symlink":
        source.symlink_to(secret)
    else:
        os.mkfifo(source)
    with open(tmp_path / "target", "wb") as target:
        with pytest.raises(OSError):
            checksums.copy_into_with_checksum(source, target.fileno())
    assert (tmp_path / "target").read_bytes() == b""


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_copy_into_refuses_what_is_not_a_regular_file_as_such_and_closes_it(tmp_path, kind):
    source = tmp_path / "source"
    source.mkdir() if kind == "directory" else os.mkfifo(source)
    open_before = len(os.listdir("/proc/self/fd"))
    with open(tmp_path / "target", "wb") as target:
        with pytest.raises(checksums.NotRegularFile, match="not a regular file"):
            checksums.copy_into_with_checksum(source, target.fileno())
        assert len(os.listdir("/proc/self/fd")) == open_before + 1  # the target only
    assert (tmp_path / "target").read_bytes() == b""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("refused", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_a_kernel_copy_is_freed_without_the_cyclic_collector(tmp_path, monkeypatch, refused):
    """One KernelCopy per file copied: in a reference cycle, each would wait for a full collection,
    piling up over thousands of jobs."""
    def refuse(*args):
        raise OSError(errno.EXDEV, "refused")

    for name in refused:
        monkeypatch.setattr(os, name, refuse)
    source, target = tmp_path / "in", tmp_path / "out"
    source.write_bytes(b"x" * 1000)
    enabled = gc.isenabled()
    gc.disable()
    try:
        with open(source, "rb") as reading, open(target, "wb") as writing:
            copy = checksums.KernelCopy(reading.fileno(), writing.fileno())
            while copy.chunk(300):
                pass
            freed = weakref.ref(copy)
            del copy
        assert freed() is None
    finally:
        if enabled:
            gc.enable()
    assert target.read_bytes() == source.read_bytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("in_thread", [True, False])
def test_a_cancelled_copy_stops_before_the_next_file(tmp_path, in_thread):
    cancel = threading.Event()
    orders, contents = _orders(tmp_path, [50_000] * 4)
    orders = [dataclasses.replace(order, cancel=cancel) for order in orders]
    threads_before = threading.active_count()
    copied = checksums.copy_files_with_checksums(orders, in_thread)
    cancel.set()  # before the first: nothing is copied
    with pytest.raises(checksums.CopyCancelled):
        next(copied)
    assert list((tmp_path / "dst").iterdir()) == []
    assert threading.active_count() == threads_before


@pytest.mark.timeout(60)
def test_a_copy_from_a_slow_filesystem_is_cancelled_within_a_chunk(tmp_path, slow_file):
    """A real slow source (FUSE: minutes for the whole file): the copy ends soon after the cancel, and the
    partial target is removed."""
    source = slow_file(1 << 30)
    (tmp_path / "dst").mkdir()
    cancel = threading.Event()
    order = checksums.CopyOrder(source, tmp_path / "dst" / "copy", size=1 << 30, cancel=cancel)
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(checksums.CopyCancelled):
        list(checksums.copy_files_with_checksums([order]))
    assert time.monotonic() - started < 6
    assert list((tmp_path / "dst").iterdir()) == []


@pytest.mark.timeout(60)
def test_a_checksum_of_a_slow_file_is_cancelled_within_a_chunk(slow_file):
    """What the link mode reads: the whole replica."""
    source = slow_file(1 << 30)
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(checksums.CopyCancelled):
        file_checksum(source, cancel=cancel)
    assert time.monotonic() - started < 6


@pytest.mark.timeout(60)
def test_a_source_whose_filesystem_goes_away_mid_copy_fails_the_copy_as_copy_failed(tmp_path, slow_file):
    """A FUSE source whose server dies during a read (a crashed xrootd-fuse, a killed squashfuse): the read
    and then the close of the source fail with ENOTCONN. The copy fails as CopyFailed, its target removed and
    both descriptors closed; the close's error once replaced it, a bare OSError the stage-in took for a bug
    of its own (1008, a traceback) and the target left open."""
    source = slow_file(64 << 10, delay=30)
    (tmp_path / "dst").mkdir()
    order = checksums.CopyOrder(source, tmp_path / "dst" / "copy", size=64 << 10)
    descriptors = len(os.listdir("/proc/self/fd"))
    raised: list[BaseException] = []
    copier = threading.Thread(target=lambda: _raised_by(lambda: list(checksums.copy_files_with_checksums([order])),
                                                        raised))
    copier.start()
    deadline = time.monotonic() + 20
    while not order.target.exists() and time.monotonic() < deadline:  # opened: its first read waits
        time.sleep(0.05)
    slow_file.server(source).kill()
    copier.join(30)
    assert not copier.is_alive()
    assert [type(error) for error in raised] == [checksums.CopyFailed], raised
    assert raised[0].error.errno == errno.ENOTCONN
    assert list((tmp_path / "dst").iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) == descriptors


def _raised_by(call, raised: list[BaseException]) -> None:
    try:
        call()
    except BaseException as error:
        raised.append(error)


COPY_WITHOUT_THREADS = """
import os, zlib
from pathlib import Path
from hpcpilot.checksums import CopyOrder, copy_files_with_checksums, copy_into_with_checksum

directory = Path(sys.argv[1])
source = directory / "big.in"
data = os.urandom(9 << 20)  # more than one kernel chunk: the copy would have a thread of its own
source.write_bytes(data)
no_thread_from_here()
(copied,) = copy_files_with_checksums([CopyOrder(source, directory / "in.copy")])
with open(directory / "out.copy", "wb") as target:
    written = copy_into_with_checksum(source, target.fileno())
print(f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", copied.adler32, written.adler32)
print((directory / "in.copy").read_bytes() == data, (directory / "out.copy").read_bytes() == data)
"""


@pytest.mark.timeout(60)
def test_a_copy_with_no_thread_to_be_had_is_made_in_the_calling_thread(tmp_path: Path) -> None:
    """A payload that took every process its user may have must not fail the other jobs' stage-in and stage-out
    (1008, a traceback, their outputs lost)."""
    child = run_without_threads(COPY_WITHOUT_THREADS, str(tmp_path))
    assert child.returncode == 0, child.stderr[-2000:]
    expected, copied, written, *same = child.stdout.split()
    assert copied == written == expected
    assert same == ["True", "True"]
