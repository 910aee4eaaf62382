"""One injected fault per job: it ends with its PanDA code and a readable diagnostic, the others finish.

Every run is the real ``mpiexec -n 2 python -m hpcpilot run`` on an access
point laid out as Harvester lays it, with three good jobs beside the faulty one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point

from ..e2e.conftest import assert_declared_file_matches, run_pilot
from .conftest import (_mount, _umount, GOOD_IDS, WITHOUT_DAC_OVERRIDE, assert_bystanders_finished, assert_failed_with, copy_job,
                       run_pilot_under, with_bystanders)

FAULTY = 4242
REPLICAS = "ap-replicas"  # where write_access_point puts Harvester's replicas, beside the access point


def worker(tmp_path: Path, faulty: dict | None = None, faulty_inputs: dict | None = None) -> Path:
    """An access point with the faulty job (if any) first and the good jobs after it."""
    definitions, inputs = ({FAULTY: faulty}, {FAULTY: faulty_inputs or {}}) if faulty else ({}, {})
    return write_access_point(tmp_path / "ap", *with_bystanders(definitions, inputs))


def replica(tmp_path: Path, lfn: str) -> Path:
    return tmp_path / REPLICAS / str(FAULTY) / lfn


# -- inputs -------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_missing_input(tmp_path: Path) -> None:
    definition, _ = copy_job(FAULTY)
    run = run_pilot(worker(tmp_path, definition), "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1099, f"in.{FAULTY}", "not found")
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_unreadable_input_replica(tmp_path: Path) -> None:
    """A mode-000 replica, read by a pilot that (though uid 0) lacks the capabilities to ignore modes."""
    definition, data = copy_job(FAULTY)
    ap = worker(tmp_path, definition, data)
    replica(tmp_path, f"in.{FAULTY}").chmod(0)
    run = run_pilot_under(WITHOUT_DAC_OVERRIDE, ap)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1099, f"in.{FAULTY}", "Permission denied")
    assert_bystanders_finished(run)


def _make_dangling(path: Path) -> None:
    path.unlink()


def _make_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("make, words", [
    (_make_dangling, ("not found",)),
    (_make_directory, ("not a regular file",)),
    (_make_fifo, ("not a regular file",)),  # opening a FIFO without a writer would block for ever
], ids=["dangling-symlink", "directory", "fifo"])
def test_input_replica_that_is_not_a_file(tmp_path: Path, make, words: tuple[str, ...]) -> None:
    definition, data = copy_job(FAULTY)
    ap = worker(tmp_path, definition, data)
    make(replica(tmp_path, f"in.{FAULTY}"))
    run = run_pilot(ap, "mpi2", timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1099, f"in.{FAULTY}", *words)
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["copy", "link"])
def test_input_size_mismatch(tmp_path: Path, mode: str) -> None:
    definition, data = copy_job(FAULTY)
    definition["fsize"] = str(len(data[f"in.{FAULTY}"]) + 1)
    run = run_pilot(worker(tmp_path, definition, data), "mpi2", "--stagein-mode", mode)
    assert_failed_with(run, FAULTY, 1099, f"in.{FAULTY}", "size", definition["fsize"])
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind, code", [("ad", 1171), ("md", 1145)])
def test_input_corrupted_after_declaration(tmp_path: Path, kind: str, code: int) -> None:
    """The replica has the declared size but one byte differs from what the checksum was taken of."""
    definition, data = copy_job(FAULTY)
    if kind == "md":
        import hashlib
        definition["checksum"] = "md:" + hashlib.md5(data[f"in.{FAULTY}"]).hexdigest()
    ap = worker(tmp_path, definition, data)
    path = replica(tmp_path, f"in.{FAULTY}")
    path.write_bytes(b"X" + path.read_bytes()[1:])
    run = run_pilot(ap, "mpi2")
    attributes = assert_failed_with(run, FAULTY, code, f"in.{FAULTY}", "differs from declared")
    assert {"ad": "adler32", "md": "md5"}[kind] in attributes["pilotErrorDiag"]
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["link", "direct"])
def test_a_payload_writing_into_a_shared_replica_fails_every_job_reading_it_in_place(tmp_path: Path,
                                                                                    mode: str) -> None:
    """Two jobs of the worker read one replica in place (Harvester staged it once); the first appends to its
    input, which link and direct modes give it as the replica itself, while the second still reads it: both
    ran on other bytes than those verified, and fail with 1303 saying what to do (without the check both
    finished, the second with the first's bytes in its output); the bystanders, in replicas of their own,
    finish."""
    writer, reader = FAULTY, FAULTY + 1
    data = {"shared.in": b"event data\n" * 100}
    started, written = tmp_path / "reader-started", tmp_path / "written"  # the order, whatever the load

    def after(marker: Path) -> str:
        return f"for i in $(seq 600); do [ -e {marker} ] && break; sleep 0.1; done"

    writer_line = f"{after(started)}; echo CHANGED >> shared.in; touch {written}; cp shared.in out.{writer}"
    reader_line = f"touch {started}; {after(written)}; cp shared.in out.{reader}"
    definitions, inputs = with_bystanders({
        writer: with_outputs(with_inputs(job_definition(writer, "sh", f"-c '{writer_line}'"), data),
                             [f"out.{writer}"]),
        reader: with_outputs(with_inputs(job_definition(reader, "sh", f"-c '{reader_line}'"), data),
                             [f"out.{reader}"]),
    }, {writer: data, reader: data})
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    (ap / str(reader) / "shared.in").unlink()  # the reader's input: the writer's replica, as shared staging has it
    (ap / str(reader) / "shared.in").symlink_to(tmp_path / REPLICAS / str(writer) / "shared.in")
    run = run_pilot(ap, "mpi2", "--stagein-mode", mode, "--cores-per-rank", "3")
    assert run.returncode == 0, run.stderr[-3000:]
    for pandaid in (writer, reader):
        assert_failed_with(run, pandaid, 1303, "shared.in", "changed while the payload ran", "--stagein-mode copy")
    assert_bystanders_finished(run)


# -- full disks ---------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_scratch_too_small_for_declared_inputs(tmp_path: Path, small_tmpfs: Path) -> None:
    """Declared sizes that cannot fit are refused before a byte is copied, so the other jobs keep their space."""
    definition, data = copy_job(FAULTY, size=2 * 1024 * 1024)
    run = run_pilot(worker(tmp_path, definition, data), "mpi2", "--scratch", str(small_tmpfs))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1098, f"in.{FAULTY}", "space")
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_scratch_fills_up_during_stagein(tmp_path: Path, small_tmpfs: Path) -> None:
    """No declared size to check beforehand: the copy itself meets ENOSPC; the partial copy is removed."""
    definition, data = copy_job(FAULTY, size=2 * 1024 * 1024)
    definition["fsize"] = "NULL"
    definition["checksum"] = "NULL"
    ap = write_access_point(tmp_path / "ap", {FAULTY: definition}, {FAULTY: data})
    run = run_pilot(ap, "grid", "--scratch", str(small_tmpfs), "--keep-scratch")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1098, f"in.{FAULTY}", "No space left")
    assert not list(small_tmpfs.glob(f"*/job-{FAULTY}-*/in.{FAULTY}")), "the partial input copy was left behind"


@pytest.mark.timeout(120)
def test_a_payload_that_fills_scratch_fails_for_the_space(tmp_path: Path, small_tmpfs: Path) -> None:
    """It runs out of space before the disk check (every disk_interval) comes round: 1098 naming the space."""
    ap = write_access_point(tmp_path / "ap", {FAULTY: job_definition(FAULTY, "bash", "-c 'head -c 2000000 /dev/zero > big'")})
    run = run_pilot(ap, "grid", "--scratch", str(small_tmpfs), env={"HPCPILOT_LIMITS__MIN_FREE_SPACE_MB": "1"})
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1098, "payload exited with code 1", "free space in scratch")


@pytest.mark.timeout(120)
def test_a_payload_that_removes_its_scratch_and_fails_keeps_its_own_error(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", {FAULTY: job_definition(FAULTY, "bash", "-c 'rm -rf \"$PWD\"; exit 3'")})
    run = run_pilot(ap, "grid")
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1305, "payload exited with code 3")


@pytest.mark.timeout(120)
def test_a_full_scratch_fails_a_job_without_inputs_for_the_space(tmp_path: Path, small_tmpfs: Path) -> None:
    with open(small_tmpfs / "filler", "wb") as filler:
        with pytest.raises(OSError):
            filler.write(b"\0" * (2 << 20))
    ap = write_access_point(tmp_path / "ap", {FAULTY: job_definition(FAULTY, "true")})
    run = run_pilot(ap, "grid", "--scratch", str(small_tmpfs))
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1098, "PoolFileCatalog.xml", "No space left")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("inodes", [4, 5])
def test_a_scratch_out_of_inodes_when_the_payload_starts_fails_for_the_space(tmp_path: Path, inodes: int) -> None:
    """Other payloads' many small files took every inode: payload.stdout (4) or payload.stderr (5) cannot be
    created. The job's setup did not fail (1110), its node ran out of local space (1098)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", f"size=1m,nr_inodes={inodes}", "tmpfs", str(scratch))
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(error, 'stderr', error)}")
    try:
        ap = write_access_point(tmp_path / "ap", {FAULTY: job_definition(FAULTY, "true")})
        run = run_pilot(ap, "grid", "--scratch", str(scratch))
    finally:
        _umount(scratch)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1098, "No space left")


@pytest.mark.timeout(120)
def test_job_directory_fills_up_during_stageout(tmp_path: Path, tmpfs_at) -> None:
    """The job directory is a 1 MiB filesystem and the output 2 MB: 1137, yet the job is declared."""
    job_dir = tmpfs_at(tmp_path / "ap" / str(FAULTY))
    definition = with_outputs(job_definition(FAULTY, "head", "-c 2000000 /dev/zero > big.out"), ["big.out"])
    run = run_pilot(worker(tmp_path, definition), "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1137, "big.out", "No space left")
    assert not (job_dir / "big.out").exists()
    assert [entry["type"] for entry in run.declared(FAULTY)] == ["log"]
    assert json.loads((job_dir / "jobReport.json").read_text())["exitCode"] == 1137
    assert not [p.name for p in job_dir.iterdir() if p.name.startswith(".hpcpilot-tmp-")]
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_a_job_directory_full_when_the_payload_starts_costs_only_the_running_declaration(tmp_path: Path,
                                                                                        tmpfs_at) -> None:
    """Declared running at its start (declare_running_after 0) into a full job directory: a warning, as when
    the monitor declares it later, and the job runs on; here its payload frees the space and it finishes."""
    job_dir = tmpfs_at(tmp_path / "ap" / str(FAULTY))
    definition, data = copy_job(FAULTY, transformation="bash",
                                jobPars=f"-c 'rm $HPCPILOT_JOB_DIR/filler; tr a-z A-Z < in.{FAULTY} > out.{FAULTY}'")
    ap = worker(tmp_path, definition, data)
    with open(job_dir / "filler", "wb") as filler, pytest.raises(OSError):
        filler.write(bytes(2 << 20))  # to the last byte: ENOSPC
    run = run_pilot(ap, "mpi2", env={"HPCPILOT_DECLARE_RUNNING_AFTER": "0"})
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr[-3000:]
    attributes = run.attributes(FAULTY)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("finished", 0), attributes
    assert_declared_file_matches(next(e for e in run.declared(FAULTY) if e["type"] == "output"))
    assert "cannot declare the job" in run.stderr
    assert_bystanders_finished(run)


# -- a read-only job directory ------------------------------------------------------------------------


def _read_only_worker(tmp_path: Path, read_only_bind) -> tuple[Path, Path]:
    definition, data = copy_job(FAULTY)
    ap = worker(tmp_path, definition, data)
    read_only_bind(ap / str(FAULTY))
    return ap, tmp_path / "scratch"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("earlier_run", [False, True], ids=["first run", "rerun"])
def test_read_only_job_directory_does_not_stop_the_others(tmp_path: Path, read_only_bind, earlier_run: bool) -> None:
    """On a rerun the pilot also cleans what an interrupted attempt left: a read-only directory is no crash."""
    if earlier_run:
        (tmp_path / "ap" / ".hpcpilot").mkdir(parents=True)
    ap, scratch = _read_only_worker(tmp_path, read_only_bind)
    run = run_pilot(ap, "mpi2", "--scratch", str(scratch))
    assert run.returncode != 70, run.stderr[-3000:]
    assert_bystanders_finished(run)
    assert not (ap / str(FAULTY) / "worker_attributes.json").exists()
    assert any(str(FAULTY) in line and "Read-only file system" in line for line in run.stderr.splitlines())
    (row,) = [job for job in run.summary()["jobs"] if job["pandaid"] == FAULTY]
    assert row["status"] == "failed" and row["code"] != 0


@pytest.mark.timeout(120)
def test_read_only_job_directory_is_reported_by_the_exit_code(tmp_path: Path, read_only_bind) -> None:
    ap, scratch = _read_only_worker(tmp_path, read_only_bind)
    run = run_pilot(ap, "mpi2", "--scratch", str(scratch))
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert any(f"job {FAULTY}: cannot declare" in line for line in run.stderr.splitlines()), run.stderr[-3000:]
    assert not list(scratch.glob(f"*/job-{FAULTY}-*")), "scratch of the undeclared job left behind"
    assert run.returncode == 64, f"exit {run.returncode}: some job could not be declared (site problem)"


@pytest.mark.timeout(120)
def test_outputs_are_not_published_for_a_job_whose_final_state_cannot_be_written(tmp_path: Path) -> None:
    """The final state is the commit point: without it Harvester must not see the job's outputs (a rerun
    would declare them a second time, over a log tarball rewritten in place)."""
    definition, data = copy_job(FAULTY)
    ap = worker(tmp_path, definition, data)
    (ap / str(FAULTY) / "worker_attributes.json" / "in-the-way").mkdir(parents=True)
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 64, run.stderr[-3000:]
    assert_bystanders_finished(run)
    assert not (ap / str(FAULTY) / "event_status.dump.json").exists()


@pytest.mark.timeout(120)
def test_entries_that_cannot_be_staged_fail_the_job_which_is_still_declared(tmp_path: Path) -> None:
    """Harvester must learn the job's end: failed (PanDA runs it again), never seen running for ever."""
    definition, data = copy_job(FAULTY)
    ap = worker(tmp_path, definition, data)
    (ap / str(FAULTY) / ".hpcpilot-pending.json" / "in-the-way").mkdir(parents=True)
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1303, "cannot stage its file declarations", ".hpcpilot-pending.json")
    assert not (ap / str(FAULTY) / "event_status.dump.json").exists()
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_a_read_only_top_with_writable_job_directories_runs_every_job(tmp_path: Path) -> None:
    """The pilot cannot leave its mark (.hpcpilot) nor its summary: the jobs run and are declared, exit 64."""
    definitions, inputs = with_bystanders({}, {})
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    mounted = []
    try:
        for args in (("--bind", str(ap), str(ap)), ("-o", "remount,ro,bind", str(ap))):
            _mount(*args)
            mounted[:1] = [ap]
        for pandaid in GOOD_IDS:  # writable again, each on its own bind mount
            _mount("--bind", str(ap / str(pandaid)), str(ap / str(pandaid)))
            mounted.append(ap / str(pandaid))
            _mount("-o", "remount,rw,bind", str(ap / str(pandaid)))
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        for path in reversed(mounted):
            _umount(path)
        pytest.skip(f"cannot bind-mount here: {getattr(error, 'stderr', error)}")
    try:
        run = run_pilot(ap, "mpi2")
    finally:
        for path in reversed(mounted):
            _umount(path)
    assert run.returncode == 64 and "Traceback" not in run.stderr, run.stderr[-3000:]
    for pandaid in GOOD_IDS:
        assert run.attributes(pandaid)["jobStatus"] == "finished"


@pytest.mark.timeout(120)
def test_a_summary_that_cannot_be_written_costs_only_the_summary(tmp_path: Path) -> None:
    definitions, inputs = with_bystanders({}, {})
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    (ap / "hpcpilot_summary.json" / "in-the-way").mkdir(parents=True)
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 64 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "cannot write hpcpilot_summary.json" in run.stderr
    for pandaid in GOOD_IDS:
        assert run.attributes(pandaid)["jobStatus"] == "finished"


# -- payloads -----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_payload_killed_by_sigsegv(tmp_path: Path) -> None:
    """A real segmentation fault (a NULL read), not a kill -SEGV."""
    definition = job_definition(FAULTY, sys.executable, '-c "import ctypes; ctypes.string_at(0)"')
    run = run_pilot(worker(tmp_path, definition), "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = assert_failed_with(run, FAULTY, 1203, "SIGSEGV")
    assert attributes["transExitCode"] == 128 + 11  # as a shell reports it: PanDA takes no negative code
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transformation, exit_code, reason", [
    ("./run.sh", 126, "not executable"),
    ("no-such-program-hpcpilot", 127, "not found"),
])
def test_payload_that_cannot_run(tmp_path: Path, transformation: str, exit_code: int, reason: str) -> None:
    """``run.sh`` is a staged input: copied into scratch without an execute bit (root cannot exec it either)."""
    definition = with_inputs(job_definition(FAULTY, transformation), {"run.sh": b"#!/bin/sh\necho hi\n"})
    run = run_pilot(worker(tmp_path, definition, {"run.sh": b"#!/bin/sh\necho hi\n"}), "mpi2")
    attributes = assert_failed_with(run, FAULTY, 1305, str(exit_code), reason)
    assert attributes["transExitCode"] == exit_code
    assert_bystanders_finished(run)


# -- the access point itself --------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("content", ['{"4242": {"PandaID": "4242", "transfor', "", "\x00\xff garbage"],
                         ids=["truncated", "empty", "binary"])
def test_corrupted_job_spec_file(tmp_path: Path, content: str) -> None:
    definition, _ = copy_job(FAULTY)
    ap = worker(tmp_path, definition)
    (ap / str(FAULTY) / "HPCJobs.json").write_bytes(content.encode("latin-1"))
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(FAULTY)
    assert attributes["jobStatus"] == "failed" and attributes["pilotErrorCode"] in (1008, 1303), attributes
    assert "HPCJobs.json" in attributes["pilotErrorDiag"]
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_job_spec_file_that_is_a_fifo(tmp_path: Path) -> None:
    """Opening a FIFO nobody writes to would block rank 0, and with it the whole worker, for ever."""
    definition, _ = copy_job(FAULTY)
    ap = worker(tmp_path, definition)
    (ap / str(FAULTY) / "HPCJobs.json").unlink()
    os.mkfifo(ap / str(FAULTY) / "HPCJobs.json")
    run = run_pilot(ap, "mpi2", timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1303, "HPCJobs.json", "not a regular file")
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_listed_job_directory_missing(tmp_path: Path) -> None:
    ap = worker(tmp_path)
    (ap / "worker_pandaids.json").write_text(json.dumps([FAULTY, *GOOD_IDS]))
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1103, "HPCJobs.json", "does not exist")
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_duplicate_pandaids_run_once(tmp_path: Path) -> None:
    ap = worker(tmp_path)
    (ap / "worker_pandaids.json").write_text(json.dumps([GOOD_IDS[0], *GOOD_IDS, GOOD_IDS[1]]))
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(job["pandaid"] for job in run.summary()["jobs"]) == sorted(GOOD_IDS)
    assert "more than once" in run.stderr
    assert_bystanders_finished(run)
    assert len(run.declared(GOOD_IDS[0])) == 2  # one output, one log: not declared twice


@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", ["bare-directory", "empty-list"])
def test_empty_access_point(tmp_path: Path, layout: str) -> None:
    ap = tmp_path / "ap"
    ap.mkdir()
    if layout == "empty-list":
        (ap / "worker_pandaids.json").write_text("[]")
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 82, run.stderr[-3000:]
    assert "no jobs" in run.stderr


# -- a bug in the pilot itself ------------------------------------------------------------------------

PLANTED_BUG = '''
import os
if os.environ.get("TEST_PLANT_BUG_FOR"):  # a bug planted in the pilot's log tarball, for one job
    from hpcpilot import staging
    _real = staging.write_log_tarball

    def _with_a_bug(spec, *args, **kwargs):
        if spec.pandaid == int(os.environ["TEST_PLANT_BUG_FOR"]):
            raise RuntimeError("planted bug")
        return _real(spec, *args, **kwargs)

    staging.write_log_tarball = _with_a_bug
'''


@pytest.mark.timeout(120)
def test_a_bug_in_stage_out_still_declares_the_job_whole(tmp_path: Path) -> None:
    """The safety net for a bug in stage-out wrote worker_attributes alone, without the job report, and did
    not count the job as declared: the pilot exited 64 saying it could not declare a job it had."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PLANTED_BUG)
    definition, inputs = copy_job(FAULTY)
    ap = worker(tmp_path, definition, inputs)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    run = run_pilot(ap, "mpi2", env={"PYTHONPATH": path, "TEST_PLANT_BUG_FOR": str(FAULTY)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, FAULTY, 1008, "stageout", "planted bug")
    assert json.loads((run.job_dir(FAULTY) / "jobReport.json").read_text())["exitCode"] == 1008
    assert not (run.job_dir(FAULTY) / "event_status.dump.json").exists()  # nothing gathered before the bug
    assert [job["declared"] for job in run.summary()["jobs"] if job["pandaid"] == FAULTY] == [True]
    assert_bystanders_finished(run)
