"""Atomic publication (hpcpilot.atomicfile): old file, new file or none, never half of one."""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from hpcpilot import atomicfile
from hpcpilot.atomicfile import (READ_SIZE, TEMP_PREFIX, atomic_writer, declared_later, publish_json_if_absent,
                                 read_bytes, read_json, rename_no_replace, short_read_is_end, write_json, write_new)

ORIGINAL = {"jobStatus": "running"}


def temp_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture
def published(tmp_path) -> Path:
    path = tmp_path / "worker_attributes.json"
    write_json(path, ORIGINAL)
    return path


@pytest.fixture
def open_umask():
    """A umask of 0, as a careless batch environment may have; restored afterwards."""
    previous = os.umask(0)
    yield
    os.umask(previous)


# -- content -----------------------------------------------------------------------------


def test_write_json_round_trips_and_replaces(published):
    assert read_json(published) == ORIGINAL
    write_json(published, {"jobStatus": "finished", "nEvents": 10})
    assert read_json(published) == {"jobStatus": "finished", "nEvents": 10}
    assert temp_files(published.parent) == []


def test_write_json_without_fsync_writes_the_same(tmp_path):
    write_json(tmp_path / "beat.json", [1, 2, 3], fsync=False)
    assert read_json(tmp_path / "beat.json") == [1, 2, 3]


@pytest.mark.parametrize("data", [b"\x00\xffbinary", "text ü".encode(), b"x" * 3_000_000])
def test_atomic_writer_publishes_on_a_clean_exit(tmp_path, data):
    path = tmp_path / "out"
    with atomic_writer(path) as handle:
        assert handle.write(data) == len(data)
        assert not path.exists()  # nothing is visible before the rename
    assert path.read_bytes() == data
    assert temp_files(tmp_path) == []


def test_publish_if_absent_publishes_only_when_nothing_is_there(tmp_path):
    path = tmp_path / "event_status.dump.json"
    assert publish_json_if_absent(path, {"1001": [{"type": "log"}]}) is True
    assert read_json(path) == {"1001": [{"type": "log"}]}
    assert publish_json_if_absent(path, {"1001": []}) is False
    assert read_json(path) == {"1001": [{"type": "log"}]}
    assert temp_files(tmp_path) == []


@pytest.mark.timeout(60)
def test_racing_publishers_never_replace_each_other(tmp_path):
    path = tmp_path / "event_status.dump.json"
    start = threading.Barrier(8)
    results: dict[int, bool] = {}

    def publish(writer: int) -> None:
        start.wait()
        results[writer] = publish_json_if_absent(path, {"writer": writer})

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [writer for writer, won in results.items() if won]
    assert len(results) == 8 and len(winners) == 1
    assert read_json(path) == {"writer": winners[0]}
    assert temp_files(tmp_path) == []


# -- errors leave nothing behind -----------------------------------------------------------


@pytest.mark.parametrize("error", [RuntimeError("payload failed"), KeyboardInterrupt()])
def test_an_error_while_writing_leaves_the_old_file_and_no_temp_file(published, error):
    with pytest.raises(type(error)):
        with atomic_writer(published) as handle:
            handle.write(b'{"jobStatus": "fin')
            raise error
    assert read_json(published) == ORIGINAL
    assert temp_files(published.parent) == []


def test_unserialisable_content_leaves_the_old_file_and_no_temp_file(published):
    with pytest.raises(TypeError):
        write_json(published, {"when": object()})
    assert read_json(published) == ORIGINAL
    assert temp_files(published.parent) == []


def test_unserialisable_content_is_not_published_if_absent(tmp_path):
    path = tmp_path / "event_status.dump.json"
    with pytest.raises(TypeError):
        publish_json_if_absent(path, {"1001": [object()]})
    assert not path.exists()
    assert temp_files(tmp_path) == []


def test_a_missing_directory_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_json(tmp_path / "absent" / "x.json", {})
    with pytest.raises(FileNotFoundError):
        publish_json_if_absent(tmp_path / "absent" / "x.json", {})
    assert list(tmp_path.iterdir()) == []


WRITE_PAST_FILE_SIZE_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    from hpcpilot.atomicfile import publish_json_if_absent, write_json
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    writer = write_json if sys.argv[2] == "write_json" else publish_json_if_absent
    try:
        writer(sys.argv[1], {"rows": list(range(100000))})
    except OSError as error:
        print("OSError", error.errno)
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writer", ["write_json", "publish_json_if_absent"])
def test_a_disk_write_failure_leaves_no_temp_file(tmp_path, writer):
    target = tmp_path / ("old.json" if writer == "write_json" else "new.json")
    if writer == "write_json":
        write_json(target, ORIGINAL)
    result = subprocess.run([sys.executable, "-c", WRITE_PAST_FILE_SIZE_LIMIT, str(target), writer],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.startswith("OSError"), result.stderr
    assert temp_files(tmp_path) == []
    if writer == "write_json":
        assert read_json(target) == ORIGINAL
    else:
        assert not target.exists()


# -- permissions ---------------------------------------------------------------------------


def write_with_atomic_writer_binary(path: Path, content: dict) -> None:
    with atomic_writer(path) as handle:
        handle.write(json.dumps(content).encode())


@pytest.mark.parametrize("write", [write_json, publish_json_if_absent, write_with_atomic_writer_binary])
def test_created_files_are_not_world_writable_even_with_umask_0(tmp_path, open_umask, write):
    path = tmp_path / "declared.json"
    write(path, {})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    mode = stat.S_IMODE(path.stat().st_mode)
    assert not mode & stat.S_IWOTH and not mode & stat.S_IWGRP, oct(mode)
    assert mode & stat.S_IROTH  # Harvester, another user, must read it


def test_a_replaced_world_writable_file_is_no_longer_world_writable(published):
    published.chmod(0o666)
    write_json(published, {"jobStatus": "finished"})
    assert not published.stat().st_mode & stat.S_IWOTH


# -- readers never see partial content -------------------------------------------------------


READER = textwrap.dedent("""
    import json, sys
    path, reads = sys.argv[1], int(sys.argv[2])
    versions = set()
    for _ in range(reads):
        with open(path, "rb") as handle:
            data = handle.read()
        try:
            content = json.loads(data)
        except ValueError:
            sys.exit(f"partial read: {len(data)} bytes that do not parse")
        if set(content["rows"]) != {content["version"]}:
            sys.exit("a mix of two versions")
        versions.add(content["version"])
    print(len(versions))
""")


def big_document(version: int) -> dict:
    return {"version": version, "rows": [version] * (40_000 + 3_000 * (version % 5))}


def write_with_atomic_writer(path: Path, content: dict) -> None:
    with atomic_writer(path, fsync=False) as handle:
        for part in json.JSONEncoder().iterencode(content):  # many small writes: a slow writer
            handle.write(part.encode())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("writer", [lambda p, c: write_json(p, c, fsync=False), write_with_atomic_writer],
                         ids=["write_json", "atomic_writer"])
def test_a_reader_process_never_sees_a_partial_file(tmp_path, writer):
    path = tmp_path / "big.json"
    writer(path, big_document(0))
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), "300"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    version = 0
    try:
        while reader.poll() is None and version < 100_000:
            version += 1
            writer(path, big_document(version))
        stdout, stderr = reader.communicate(timeout=120)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0, stderr
    assert int(stdout) > 1, "the reader saw a single version: the test did not overlap reads and writes"
    assert temp_files(tmp_path) == []


# -- files declared later, no-replace renames, new files ------------------------------------


def test_declared_later_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "replica"
    victim.write_bytes(b"precious")
    target = tmp_path / "out.root"
    target.symlink_to(victim)
    with declared_later(target) as handle:
        handle.write(b"new output")
    assert not target.is_symlink() and target.read_bytes() == b"new output"
    assert victim.read_bytes() == b"precious"


def test_declared_later_does_not_block_on_a_fifo_and_replaces_it(tmp_path):
    target = tmp_path / "out.root"
    os.mkfifo(target)
    with declared_later(target) as handle:
        handle.write(b"data")
    assert stat.S_ISREG(target.stat().st_mode) and target.read_bytes() == b"data"


def test_declared_later_removes_a_partial_file_on_error(tmp_path):
    target = tmp_path / "out.root"
    with pytest.raises(RuntimeError):
        with declared_later(target) as handle:
            handle.write(b"half")
            raise RuntimeError("disk gone")
    assert not target.exists()


def test_rename_no_replace_moves_only_onto_a_free_name(tmp_path, rename_path):
    source, target = tmp_path / ".journal", tmp_path / "event_status.dump.json"
    source.write_text("new")
    target.write_text("not yet taken")
    with pytest.raises(FileExistsError):
        rename_no_replace(source, target)
    assert (source.read_text(), target.read_text()) == ("new", "not yet taken")
    target.unlink()
    rename_no_replace(source, target)
    assert target.read_text() == "new" and not source.exists()


def test_a_source_renamed_away_amid_the_link_fallback_is_not_moved(tmp_path, monkeypatch):
    """Between the link and the unlink Harvester renames the dump (the source of a take-back) to .read: the
    dump is Harvester's, so the pilot's link to it must go, or its entries would be declared twice."""
    monkeypatch.setattr(atomicfile, "_renameat2", None)
    source, target, read = tmp_path / "event_status.dump.json", tmp_path / ".taken", tmp_path / "dump.read"
    source.write_text("entries")
    real_unlink, interleaved = os.unlink, []

    def harvester_renames_first(path, *args, **kwargs):
        if not interleaved:
            interleaved.append(os.rename(source, read))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", harvester_renames_first)
    with pytest.raises(FileNotFoundError):
        rename_no_replace(source, target)
    assert interleaved and not target.exists() and read.read_text() == "entries"


def test_write_new_never_overwrites(tmp_path):
    path = tmp_path / ".journal"
    write_new(path, b"first")
    with pytest.raises(FileExistsError):
        write_new(path, b"second")
    assert path.read_bytes() == b"first"


# -- reading what others wrote ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, READ_SIZE - 1, READ_SIZE, 3 * READ_SIZE + 5])
def test_read_bytes_reads_a_regular_file_whole(tmp_path, size):
    path = tmp_path / "HPCJobs.json"
    content = os.urandom(size)
    path.write_bytes(content)
    assert read_bytes(path) == content


@pytest.mark.timeout(30)
def test_read_bytes_reads_on_past_short_reads():
    """procfs hands out a page or so per read, as FUSE filesystems may: a short read is not the end."""
    if not os.access("/proc/kallsyms", os.R_OK):
        pytest.skip("no readable /proc/kallsyms")
    with open("/proc/kallsyms", "rb") as handle:
        expected = handle.read()
    assert len(expected) > READ_SIZE and read_bytes("/proc/kallsyms") == expected


def test_a_short_read_is_the_end_on_the_filesystems_that_fill_their_reads(tmp_path):
    assert short_read_is_end(tmp_path)  # ext4 or tmpfs wherever the tests run
    assert short_read_is_end("/dev/shm")


@pytest.mark.parametrize("path", ["/proc/self", "/sys/kernel", "/nonexistent/access/point"])
def test_a_short_read_is_not_the_end_where_unsure(path):
    assert not short_read_is_end(path)


@pytest.mark.timeout(30)
def test_read_bytes_stops_at_a_short_read_only_when_told_it_is_the_end():
    if not os.access("/proc/kallsyms", os.R_OK):
        pytest.skip("no readable /proc/kallsyms")
    first = read_bytes("/proc/kallsyms", short_read_is_end=True)
    assert 0 < len(first) < READ_SIZE and len(read_bytes("/proc/kallsyms")) > READ_SIZE


@pytest.mark.timeout(10)
def test_read_bytes_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    path = tmp_path / "HPCJobs.json"
    os.mkfifo(path)
    with pytest.raises(OSError, match="not a regular file"):
        read_bytes(path)


@pytest.mark.timeout(10)
def test_read_bytes_refuses_a_device_that_never_ends(tmp_path):
    path = tmp_path / "worker_pandaids.json"
    path.symlink_to("/dev/zero")
    with pytest.raises(OSError, match="not a regular file"):
        read_json(path)


def test_read_bytes_names_the_file_in_its_errors(tmp_path):
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        read_bytes(tmp_path)


def test_read_bytes_refuses_a_file_over_its_limit_without_reading_it(tmp_path):
    path = tmp_path / "HPCJobs.json"
    with open(path, "wb") as handle:
        handle.truncate(3 * READ_SIZE)  # sparse: nothing to read, but its size says enough
    with pytest.raises(OSError, match="more than"):
        read_bytes(path, limit=2 * READ_SIZE)
    assert read_bytes(path, limit=3 * READ_SIZE) == bytes(3 * READ_SIZE)


def test_read_json_of_json_nested_too_deeply_is_a_value_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_json(path)


@pytest.mark.timeout(30)
def test_a_new_file_that_cannot_be_written_whole_is_removed(tmp_path):
    """A journal cut short (here by a file size limit; ENOSPC alike) must not stay for a later run to
    publish as if whole."""
    script = ("import resource, signal, sys; from pathlib import Path; from hpcpilot.atomicfile import write_new\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))\n"
              "try:\n    write_new(Path(sys.argv[1]), b'x' * 100)\nexcept OSError as error:\n    print(error.errno)\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "journal.json")], capture_output=True,
                         text=True, timeout=20)
    assert run.stdout.split() == [str(errno.EFBIG)], run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_a_short_read_is_not_the_end_on_fuse(slow_file):
    assert not short_read_is_end(slow_file(1 << 20, delay=0))


@pytest.mark.timeout(60)
def test_read_bytes_reads_a_fuse_file_whole_past_its_short_reads(slow_file):
    """A real FUSE filesystem (direct_io, so the kernel hands its short reads on) answering every read with
    1000 bytes: the file is read whole, in order."""
    size = 3 * READ_SIZE + 123
    path = slow_file(size, delay=0, short=1000)
    assert len(read_bytes(path, short_read_is_end=True)) == 1000  # what stopping at a short read would give
    assert read_bytes(path) == (bytes(range(251)) * (size // 251 + 1))[:size]


@pytest.mark.timeout(60)  # mounts a tmpfs
@pytest.mark.parametrize("writer", [declared_later, atomic_writer, lambda path: atomic_writer(path, fsync=False)],
                         ids=["declared_later", "atomic_writer", "atomic_writer unsynced"])
def test_a_write_that_fills_the_disk_frees_its_space_at_once_though_another_process_holds_the_file(
        small_tmpfs: Path, writer) -> None:
    """A payload launched meanwhile holds every open file of the pilot until its exec; the failed file must
    not keep the disk full for the next write (here another descriptor on it plays that process)."""
    held: list[int] = []
    with pytest.raises(OSError) as failure:
        with writer(small_tmpfs / "big.out") as handle:
            held += [os.open(path, os.O_RDONLY) for path in small_tmpfs.iterdir()]  # the file being written
            handle.write(bytes(2 << 20))  # twice the filesystem
    assert failure.value.errno == errno.ENOSPC and held
    try:
        write_new(small_tmpfs / "log.tgz", bytes(512 << 10))
    finally:
        for fd in held:
            os.close(fd)
    assert sorted(path.name for path in small_tmpfs.iterdir()) == ["log.tgz"]
