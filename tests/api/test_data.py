"""hpcpilot.api.data as a Harvester plugin calls it: real files, real filesystems (FUSE, tmpfs), real threads."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, write_access_point
from hpcpilot.api.communication import AccessPointClient
from hpcpilot.api.data import Transfer, TransferResult, adler32, stage_in, stage_out
from hpcpilot.atomicfile import TEMP_PREFIX
from hpcpilot.checksums import NotRegularFile
from hpcpilot.config import Limits
from hpcpilot.errors import ErrorCode
from ..conftest import mount

DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit
ADLER = f"{zlib.adler32(DATA):08x}"
MD5 = hashlib.md5(DATA).hexdigest()
NO_TIME = Limits(transfer_timeout_base=0, transfer_timeout_per_mb=0)
SHORT_TIME = Limits(transfer_timeout_base=1, transfer_timeout_per_mb=0)  # the slow 1 GiB file takes minutes
# A copy past its limit ends after the chunk in flight, and is taken for hung transfer_timeout_base after its limit:
# that must outlast one 4 MiB chunk of the slow file (0.85 s idle, up to 3 s at nice 19 beside three busy loops).
COPY_TIME = Limits(transfer_timeout_base=4, transfer_timeout_per_mb=0)

# Each direction with its codes: (function, failed, timeout, adler32 mismatch, md5 mismatch, no space)
STAGE_IN = (stage_in, 1099, 1151, 1171, 1145, 1098)
STAGE_OUT = (stage_out, 1137, 1152, 1172, 1141, 1137)
DIRECTIONS = pytest.mark.parametrize("direction", [STAGE_IN, STAGE_OUT], ids=["stage_in", "stage_out"])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    (tmp_path / "shared").mkdir()
    path = tmp_path / "shared" / "EVNT.01234._000001.pool.root.1"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def local(tmp_path: Path) -> Path:
    path = tmp_path / "local"
    path.mkdir()
    return path


def only(results: list[TransferResult]) -> TransferResult:
    [result] = results
    return result


@DIRECTIONS
@pytest.mark.parametrize("checksum", [f"ad:{ADLER}", f"md:{MD5}", ADLER, f"AD:{ADLER.upper()}", None])
def test_a_file_is_copied_with_its_size_and_checksum_verified(source: Path, local: Path, direction: tuple,
                                                              checksum: str | None) -> None:
    result = only(direction[0]([Transfer(source, local / "in.root", size=len(DATA), checksum=checksum)]))
    assert (result.ok, result.error_code, result.error_diag) == (True, 0, "")
    assert (result.size, result.adler32) == (len(DATA), ADLER)
    assert result.seconds >= 0
    assert (local / "in.root").read_bytes() == DATA
    assert os.listdir(local) == ["in.root"]


def test_paths_may_be_strings(source: Path, local: Path) -> None:
    transfer = Transfer(str(source), str(local / "in.root"))
    assert transfer.source == source and transfer.destination == local / "in.root"
    assert only(stage_in([transfer])).ok


def test_a_symlinked_source_is_followed_as_cp_does(source: Path, local: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(source)
    result = only(stage_in([Transfer(tmp_path / "link", local / "in.root", checksum=ADLER)]))
    assert result.ok, result.error_diag
    assert (local / "in.root").read_bytes() == DATA and not (local / "in.root").is_symlink()


@DIRECTIONS
def test_a_wrong_size_fails_and_leaves_nothing(source: Path, local: Path, direction: tuple) -> None:
    result = only(direction[0]([Transfer(source, local / "in.root", size=len(DATA) + 1, checksum=ADLER)]))
    assert result.error_code == direction[1] and not result.ok
    assert f"size {len(DATA)} differs from the expected {len(DATA) + 1}" in result.error_diag
    assert str(source) in result.error_diag
    assert (result.size, result.adler32) == (len(DATA), ADLER)  # what was copied, then refused
    assert os.listdir(local) == []


@DIRECTIONS
def test_a_wrong_adler32_fails_with_its_code(source: Path, local: Path, direction: tuple) -> None:
    result = only(direction[0]([Transfer(source, local / "in.root", checksum="ad:0badc0de")]))
    assert result.error_code == direction[3]
    assert f"adler32 {ADLER} differs from the expected 0badc0de" in result.error_diag
    assert "fetch it again" in result.error_diag
    assert os.listdir(local) == []


@DIRECTIONS
def test_a_wrong_md5_fails_with_its_code(source: Path, local: Path, direction: tuple) -> None:
    result = only(direction[0]([Transfer(source, local / "in.root", checksum="md:" + "0" * 32)]))
    assert result.error_code == direction[4]
    assert f"md5 {MD5} differs" in result.error_diag
    assert os.listdir(local) == []


@DIRECTIONS
@pytest.mark.parametrize("checksum", ["sha256:" + "0" * 64, "ad:xyz", "md:1234", "12345"])
def test_an_unknown_checksum_fails_with_1314_before_anything_is_read(source: Path, local: Path, direction: tuple,
                                                                     checksum: str) -> None:
    result = only(direction[0]([Transfer(source, local / "in.root", checksum=checksum)]))
    assert result.error_code == ErrorCode.UNKNOWN_CHECKSUM_TYPE == 1314
    assert repr(checksum) in result.error_diag and "ad:<8 hex digits>" in result.error_diag
    assert (result.size, result.adler32) == (0, "")
    assert os.listdir(local) == []


def test_a_missing_source_fails_stage_in_with_1099_not_found(local: Path, tmp_path: Path) -> None:
    result = only(stage_in([Transfer(tmp_path / "nowhere.root", local / "in.root")]))
    assert result.error_code == ErrorCode.STAGEIN_FAILED
    assert "not found" in result.error_diag and str(tmp_path / "nowhere.root") in result.error_diag
    assert (result.size, result.adler32) == (0, "")
    assert os.listdir(local) == []


def test_a_missing_source_fails_stage_out_with_1137(local: Path, tmp_path: Path) -> None:
    result = only(stage_out([Transfer(tmp_path / "nowhere.root", local / "out.root")]))
    assert result.error_code == ErrorCode.STAGEOUT_FAILED
    assert "No such file" in result.error_diag and "nowhere.root" in result.error_diag
    assert os.listdir(local) == []


@DIRECTIONS
def test_a_directory_source_is_refused(local: Path, tmp_path: Path, direction: tuple) -> None:
    result = only(direction[0]([Transfer(tmp_path, local / "in.root")]))
    assert result.error_code == direction[1]
    assert "not a regular file" in result.error_diag
    assert os.listdir(local) == []


@pytest.mark.timeout(30)
@DIRECTIONS
def test_a_fifo_source_is_refused_without_waiting_for_a_writer(local: Path, tmp_path: Path, direction: tuple) -> None:
    os.mkfifo(tmp_path / "fifo")
    result = only(direction[0]([Transfer(tmp_path / "fifo", local / "in.root")]))
    assert result.error_code == direction[1] and "not a regular file" in result.error_diag
    assert os.listdir(local) == []


@DIRECTIONS
def test_one_failing_file_among_good_ones_fails_alone_and_in_its_place(source: Path, local: Path, tmp_path: Path,
                                                                      direction: tuple) -> None:
    transfers = [Transfer(source, local / "a", checksum=ADLER),
                 Transfer(tmp_path / "missing", local / "b"),
                 Transfer(source, local / "c", checksum="ad:00000001"),
                 Transfer(source, local / "d", size=len(DATA), checksum=f"md:{MD5}")]
    results = direction[0](transfers)
    assert [result.transfer for result in results] == transfers
    assert [result.error_code for result in results] == [0, direction[1], direction[3], 0]
    assert sorted(os.listdir(local)) == ["a", "d"]
    assert (local / "a").read_bytes() == (local / "d").read_bytes() == DATA


@DIRECTIONS
def test_an_existing_destination_is_replaced_in_one_rename(source: Path, local: Path, direction: tuple) -> None:
    """The old file is not written over: a reader that has it open still reads it whole, and the new one
    is another file (inode), put in place by the rename."""
    destination = local / "in.root"
    destination.write_bytes(b"old content")
    old_inode = destination.stat().st_ino
    with open(destination, "rb") as reader:
        result = only(direction[0]([Transfer(source, destination, checksum=ADLER)]))
        assert result.ok, result.error_diag
        assert reader.read() == b"old content"
    assert destination.read_bytes() == DATA and destination.stat().st_ino != old_inode
    assert os.listdir(local) == ["in.root"]


@DIRECTIONS
@pytest.mark.parametrize("problem", [{"checksum": "ad:00000001"}, {"size": 1}, {"checksum": f"md:{'1' * 32}"}])
def test_a_failed_transfer_keeps_the_old_destination_and_leaves_no_temp_file(source: Path, local: Path,
                                                                            direction: tuple, problem: dict) -> None:
    destination = local / "in.root"
    destination.write_bytes(b"old content")
    result = only(direction[0]([Transfer(source, destination, **problem)]))
    assert not result.ok
    assert destination.read_bytes() == b"old content"
    assert os.listdir(local) == ["in.root"]


@pytest.mark.timeout(30)
@DIRECTIONS
def test_a_time_limit_of_zero_fails_with_the_timeout_code(source: Path, local: Path, direction: tuple) -> None:
    result = only(direction[0]([Transfer(source, local / "in.root")], limits=NO_TIME))
    assert result.error_code == direction[2]
    assert "timed out" in result.error_diag and "Limits.transfer_timeout" in result.error_diag
    assert os.listdir(local) == []


def slow_then_next(direction: tuple, slow: Path, source: Path, local: Path, within: float,
                   limits: Limits = SHORT_TIME) -> list:
    """The transfer of ``slow``, then of ``source``, under ``limits``: both results, the first failed with the
    direction's timeout code and the second done, all ``within`` seconds."""
    started = time.monotonic()
    results = direction[0]([Transfer(slow, local / "slow.root"), Transfer(source, local / "next.root")],
                           limits=limits)
    assert time.monotonic() - started < within
    assert [result.error_code for result in results] == [direction[2], 0], results[0].error_diag
    return results


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_slow_copy_is_ended_at_its_time_limit_and_the_next_file_still_goes(source: Path, local: Path, slow_file,
                                                                            direction: tuple) -> None:
    """A real slow filesystem (FUSE: minutes for its 1 GiB): the copy ends soon after its 4 s limit, its temp
    file removed, and the next file has its own limit."""
    results = slow_then_next(direction, slow_file(1 << 30), source, local, within=15, limits=COPY_TIME)
    assert "over its limit of 4 s" in results[0].error_diag
    assert os.listdir(local) == ["next.root"]


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_read_that_outlasts_the_time_limit_is_given_up_on_and_its_copy_never_put_in_place(
        source: Path, local: Path, slow_file, direction: tuple) -> None:
    """One read of 10 s (a filesystem that hangs: the limit is checked only between chunks): the transfer is
    given up on at its 1 s limit plus 1 s, the next file goes, and the abandoned copy, once its read returns,
    is removed, never renamed into place (without the watch the call waited out the read)."""
    results = slow_then_next(direction, slow_file(64 << 10, delay=10), source, local, within=8)
    assert "no answer from the filesystem after 2 s" in results[0].error_diag
    _wait_for_no_temp_file(local)  # the read returned, the copy ended
    assert os.listdir(local) == ["next.root"]


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_copy_given_up_on_during_a_slow_fdatasync_is_never_put_in_place(tmp_path: Path, slow_sync_dir,
                                                                          direction: tuple) -> None:
    """A disk that takes 4 s to flush (FUSE) the few bytes copied in an instant: the caller gives up at the 1 s
    limit plus 1 s, with the timeout code, and the verified copy, once flushed, is not renamed into place after
    all (the limit was checked before the flush: the file appeared for a caller told it had failed)."""
    source = tmp_path / "small.root"
    source.write_bytes(b"a few bytes")
    destination = slow_sync_dir(4) / "small.root"
    result = only(direction[0]([Transfer(source, destination)], limits=SHORT_TIME))
    assert result.error_code == direction[2], result.error_diag
    _wait_for_no_temp_file(destination.parent)  # the flush returned, the copy ended
    assert os.listdir(destination.parent) == []


INTERRUPTED = """
import sys
from hpcpilot.api.data import Transfer, stage_in, stage_out
transfer = [Transfer(sys.argv[2], sys.argv[3])]
try:
    {"stage_in": stage_in, "stage_out": stage_out}[sys.argv[1]](transfer)
except KeyboardInterrupt:
    sys.exit(130)
"""


# Ctrl-C just as the caller's start() of the transfer's thread returns, the copy begun (its temp file there)
INTERRUPTED_AS_ITS_THREAD_STARTS = """
import os, sys, threading, time
start = threading.Thread.start

def start_then_interrupted(thread):
    start(thread)
    if threading.current_thread() is threading.main_thread():
        while not os.listdir(os.path.dirname(sys.argv[3])):
            time.sleep(0.01)
        raise KeyboardInterrupt

threading.Thread.start = start_then_interrupted
""" + INTERRUPTED


def sparse_file(path: Path) -> Path:
    """A 3 GiB file, sparse: its copy takes seconds."""
    with path.open("wb") as sparse:
        sparse.truncate(3 << 30)
    return path


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_transfer_interrupted_by_sigint_leaves_nothing_at_the_destination(tmp_path: Path, local: Path,
                                                                           direction: tuple) -> None:
    """A real process copying a 3 GiB (sparse) file gets SIGINT (Ctrl-C): KeyboardInterrupt, and neither the
    destination nor its temp file is left, even though the copy runs in a thread of its own."""
    big = sparse_file(tmp_path / "big.root")
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTED, direction[0].__name__, str(big),
                                str(local / "big.root")], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_temp_file(local)  # the copy has begun
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130, process.stderr.read()
    finally:
        process.kill()
        process.wait()
    assert os.listdir(local) == []


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_transfer_interrupted_as_its_thread_starts_leaves_nothing_at_the_destination(tmp_path: Path, local: Path,
                                                                                       direction: tuple) -> None:
    """Ctrl-C while the caller still waits in start() for the transfer's thread, which has begun its copy: the
    copy was neither ended nor waited for, and the exiting process left its temp file behind (the test above
    failed so, 1 of 5 runs at nice 19 beside three busy loops)."""
    big = sparse_file(tmp_path / "big.root")
    ended = subprocess.run([sys.executable, "-c", INTERRUPTED_AS_ITS_THREAD_STARTS, direction[0].__name__, str(big),
                            str(local / "big.root")], capture_output=True, text=True, timeout=30)
    assert ended.returncode == 130, ended.stderr
    assert os.listdir(local) == []


@DIRECTIONS
def test_a_stop_set_before_starts_nothing(source: Path, local: Path, direction: tuple) -> None:
    stop = threading.Event()
    stop.set()
    results = direction[0]([Transfer(source, local / "a"), Transfer(source, local / "b")], stop=stop)
    assert [result.error_code for result in results] == [direction[1]] * 2
    assert all("stopped before copying" in result.error_diag for result in results)
    assert os.listdir(local) == []


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_stop_during_a_copy_ends_it_within_a_chunk_and_starts_no_other(source: Path, local: Path, slow_file,
                                                                        direction: tuple) -> None:
    slow = slow_file(1 << 30)
    stop = threading.Event()
    results: list[TransferResult] = []
    transfers = [Transfer(slow, local / "slow.root"), Transfer(source, local / "next.root")]
    worker = threading.Thread(target=lambda: results.extend(direction[0](transfers, stop=stop)))
    worker.start()
    _wait_for_temp_file(local)  # the copy has begun
    stop.set()
    stopped = time.monotonic()
    worker.join(30)
    assert not worker.is_alive() and time.monotonic() - stopped < 10
    assert [result.error_code for result in results] == [direction[1]] * 2
    assert "stopped while copying" in results[0].error_diag
    assert "stopped before copying" in results[1].error_diag
    assert os.listdir(local) == []


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_stop_during_a_read_that_does_not_return_ends_the_transfer_at_once(source: Path, local: Path, slow_file,
                                                                            direction: tuple) -> None:
    """One read of 20 s (a hung filesystem) under the default limits (minutes): the stop ends the call within
    about a second, as it ends a copy between chunks, not at the time limit; the copy is never put in place."""
    slow = slow_file(64 << 10, delay=20)
    stop = threading.Event()
    results: list[TransferResult] = []
    transfers = [Transfer(slow, local / "slow.root"), Transfer(source, local / "next.root")]
    worker = threading.Thread(target=lambda: results.extend(direction[0](transfers, stop=stop)))
    worker.start()
    _wait_for_temp_file(local)  # the copy has begun: its first read hangs
    stop.set()
    worker.join(10)
    assert not worker.is_alive(), "the stop did not end a transfer stuck in a read"
    assert [result.error_code for result in results] == [direction[1]] * 2
    assert "stopped" in results[0].error_diag and "stopped before copying" in results[1].error_diag
    _wait_for_no_temp_file(local)  # the read returned, the copy ended
    assert os.listdir(local) == []


def _wait_for_no_temp_file(directory: Path) -> None:
    deadline = time.monotonic() + 30
    while any(name.startswith(TEMP_PREFIX) for name in os.listdir(directory)):
        assert time.monotonic() < deadline, "the abandoned copy never ended"
        time.sleep(0.1)


def _wait_for_temp_file(directory: Path) -> None:
    deadline = time.monotonic() + 20
    while not any(name.startswith(TEMP_PREFIX) for name in os.listdir(directory)):
        assert time.monotonic() < deadline, "the copy never began"
        time.sleep(0.02)


@pytest.mark.timeout(60)
@DIRECTIONS
def test_a_full_disk_fails_with_its_code_and_frees_the_space(tmp_path: Path, tmpfs_at, direction: tuple) -> None:
    """A real 1 MiB tmpfs: the 2 MiB copy fails with ENOSPC; its part is removed, so a small file after it fits."""
    full = tmpfs_at(tmp_path / "tmpfs")
    (tmp_path / "big").write_bytes(DATA * 2)
    (tmp_path / "small").write_bytes(b"small")
    results = direction[0]([Transfer(tmp_path / "big", full / "big"), Transfer(tmp_path / "small", full / "small")])
    assert [result.error_code for result in results] == [direction[5], 0], results[0].error_diag
    assert "No space left" in results[0].error_diag and "big" in results[0].error_diag
    assert os.listdir(full) == ["small"]


@DIRECTIONS
def test_a_destination_directory_that_does_not_exist_fails_that_transfer(source: Path, local: Path, tmp_path: Path,
                                                                         direction: tuple) -> None:
    results = direction[0]([Transfer(source, tmp_path / "no" / "dir" / "in.root"), Transfer(source, local / "ok")])
    assert [result.error_code for result in results] == [direction[1], 0]
    assert f"{tmp_path / 'no' / 'dir'} does not exist; create it first" in results[0].error_diag
    assert not (tmp_path / "no").exists()


@DIRECTIONS
@pytest.mark.parametrize("same_as", ["path", "symlink", "hard link"])
def test_a_source_that_is_the_destination_fails_and_is_left_as_it_was(source: Path, tmp_path: Path,
                                                                      direction: tuple, same_as: str) -> None:
    destination = source
    if same_as == "symlink":
        (destination := tmp_path / "link").symlink_to(source)
    elif same_as == "hard link":
        os.link(source, destination := tmp_path / "hard")
    result = only(direction[0]([Transfer(source, destination, checksum=ADLER)]))
    assert result.error_code == direction[1] and "is the source itself" in result.error_diag
    assert source.read_bytes() == DATA
    assert not [name for name in os.listdir(source.parent) if name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize("function", [stage_in, stage_out])
@pytest.mark.parametrize("wrong", [("a", "b"), "a", {"source": "a", "destination": "b"}, None])
def test_anything_but_a_transfer_is_a_type_error_before_any_file_is_touched(source: Path, local: Path, function,
                                                                            wrong) -> None:
    with pytest.raises(TypeError, match="is not a hpcpilot.api.data.Transfer"):
        function([Transfer(source, local / "first"), wrong])
    assert os.listdir(local) == []


@pytest.mark.parametrize("function", [stage_in, stage_out])
def test_one_transfer_not_in_a_list_is_a_type_error_that_says_so(source: Path, local: Path, function) -> None:
    with pytest.raises(TypeError, match="give a list of Transfers"):
        function(Transfer(source, local / "first"))
    assert os.listdir(local) == []


@pytest.mark.parametrize("paths", [("a\0b", "b"), ("a", "b\0"), ("", "b"), ("a", "")])
def test_a_path_that_is_empty_or_holds_a_nul_byte_is_a_value_error_when_the_transfer_is_made(paths) -> None:
    """Else the NUL raised from inside stage_in, the transfers after it left without results, and an empty
    destination meant the current directory."""
    with pytest.raises(ValueError, match="is not a path"):
        Transfer(*paths)


@pytest.mark.parametrize("size", [-1, 1.5, "10", True])
def test_a_size_that_is_not_a_byte_count_is_a_value_error(size) -> None:
    with pytest.raises(ValueError, match="is not a number of bytes"):
        Transfer("a", "b", size=size)


@pytest.mark.parametrize("checksum", [0x0A1B2C3D, b"ad:0a1b2c3d"])
def test_a_checksum_that_is_not_a_str_is_a_value_error(checksum) -> None:
    with pytest.raises(ValueError, match="is not a str"):
        Transfer("a", "b", checksum=checksum)


def test_no_transfers_no_results() -> None:
    assert stage_in([]) == [] and stage_out(iter([])) == []


def test_adler32_of_a_file(source: Path, tmp_path: Path) -> None:
    assert adler32(source) == ADLER and adler32(str(source)) == ADLER
    (tmp_path / "empty").write_bytes(b"")
    assert adler32(tmp_path / "empty") == "00000001"


@pytest.mark.timeout(30)
def test_adler32_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    for path in (tmp_path, tmp_path / "fifo"):
        with pytest.raises(NotRegularFile):
            adler32(path)
    with pytest.raises(FileNotFoundError):
        adler32(tmp_path / "missing")


@DIRECTIONS
def test_the_sizes_and_checksums_of_a_parsed_job_definition_are_taken_as_they_are(tmp_path: Path, local: Path,
                                                                                   direction: tuple) -> None:
    inputs = {"EVNT.1": DATA, "EVNT.2": DATA[:1000]}
    definition = with_inputs(job_definition(4711, "true"), inputs)
    definition["checksum"] = f"ad:{ADLER},md:{hashlib.md5(inputs['EVNT.2']).hexdigest()}"
    access_point = write_access_point(tmp_path / "ap", {4711: definition}, {4711: inputs})
    [job] = AccessPointClient(access_point).jobs()
    (access_point / "4711" / "EVNT.2").resolve().write_bytes(DATA[1:1001])  # a replica gone bad
    results = direction[0]([Transfer(access_point / "4711" / spec.lfn, local / spec.lfn, size=spec.fsize,
                                     checksum=spec.checksum) for spec in job.inputs])
    assert [result.error_code for result in results] == [0, direction[4]]
    assert [result.transfer.checksum for result in results] == definition["checksum"].split(",")


@pytest.mark.timeout(60)
def test_a_destination_that_cannot_be_written_is_named_not_the_source(source: Path, small_tmpfs: Path) -> None:
    mount("-o", "remount,ro", str(small_tmpfs))
    result = only(stage_in([Transfer(source, small_tmpfs / "in.root")]))
    assert result.error_code == 1099
    assert "Read-only file system" in result.error_diag and str(small_tmpfs) in result.error_diag
