"""Hostile input: names, payload-made symlinks and special files, a symlinked job directory,
file modes, and secrets. The pilot reads and writes only in scratch and in the job's own directory,
publishes nothing it did not make from there, and never echoes a secret.
"""
from __future__ import annotations

import json
import shlex
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point

from ..e2e.conftest import run_pilot
from .conftest import (GOOD_IDS, WITH_UMASK_000, WITHOUT_DAC_OVERRIDE, assert_bystanders_finished,
                       assert_failed_with, copy_job, run_pilot_under, with_bystanders)

HOSTILE = 6666
MB = 1 << 20
DECOY = b"DECOY-CONTENT-never-to-be-published"
SHADOW_MARK = b"root:"  # the first bytes of /etc/shadow


def worker(tmp_path: Path, hostile: dict, hostile_inputs: dict | None = None) -> Path:
    return write_access_point(tmp_path / "ap", *with_bystanders({HOSTILE: hostile}, {HOSTILE: hostile_inputs or {}}))


def decoy_dir(tmp_path: Path) -> Path:
    """A directory outside scratch and the access point, holding a file nobody may publish."""
    path = tmp_path / "elsewhere"
    path.mkdir(exist_ok=True)
    (path / "decoy.txt").write_bytes(DECOY)
    return path


def published_bytes(ap: Path) -> bytes:
    """Every byte the pilot left for Harvester: each file of the access point and each tarball member."""
    chunks = []
    for path in ap.rglob("*"):
        if path.is_file() and not path.is_symlink():
            chunks.append(path.read_bytes())
            if path.name.endswith(".tgz"):
                chunks.extend(_tarball_contents(path))
    return b"\n".join(chunks)


def _tarball_contents(path: Path) -> list[bytes]:
    with tarfile.open(path) as tar:
        return [tar.extractfile(m).read() if m.isfile() else m.linkname.encode() for m in tar.getmembers()]


def log_tarball_members(run, pandaid: int) -> list[tarfile.TarInfo]:
    entry = next(e for e in run.declared(pandaid) if e["type"] == "log")
    with tarfile.open(entry["path"]) as tar:
        return tar.getmembers()


def files_outside(tmp_path: Path) -> set[Path]:
    """Everything under tmp_path except the access point and scratch, to see what a run adds elsewhere."""
    skip = (tmp_path / "ap", tmp_path / "scratch")
    return {p for p in tmp_path.rglob("*") if not any(p == s or s in p.parents for s in skip)}


# -- names from the job definition -------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("field, value", [
    ("inFiles", "../in.6666"),
    ("inFiles", "/etc/shadow"),
    ("outFiles", "../../escaped.out,log.6666.job.log.tgz"),
    ("outFiles", "/tmp/hpcpilot-escaped.out,log.6666.job.log.tgz"),
    ("logFile", "../escaped.log.tgz"),
    ("logFile", "/tmp/hpcpilot-escaped.log.tgz"),
], ids=["in-dotdot", "in-absolute", "out-dotdot", "out-absolute", "log-dotdot", "log-absolute"])
def test_path_names_are_refused(tmp_path: Path, field: str, value: str) -> None:
    definition, data = copy_job(HOSTILE)
    definition[field] = value
    if field == "logFile":
        definition["outFiles"] = f"out.{HOSTILE},{value}"
    ap = worker(tmp_path, definition, data)
    before = files_outside(tmp_path)
    run = run_pilot(ap, "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, HOSTILE, 1371, field, value.split(",")[0])
    assert files_outside(tmp_path) == before
    assert not Path("/tmp/hpcpilot-escaped.out").exists() and not Path("/tmp/hpcpilot-escaped.log.tgz").exists()
    assert SHADOW_MARK not in published_bytes(ap)
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("field, value", [
    ("outFiles", "event_status.dump.json"),
    ("outFiles", "worker_attributes.json"),
    ("logFile", "jobReport.json"),
    ("outFiles", ".hpcpilot-pending.json"),
    ("inFiles", "payload.stdout"),
    ("inFiles", "PoolFileCatalog.xml"),
], ids=["out-dump", "out-attributes", "log-jobreport", "out-pending", "in-stdout", "in-catalogue"])
def test_names_of_the_pilot_s_and_harvester_s_own_files_are_refused(tmp_path: Path, field: str, value: str) -> None:
    """As an output such a name would publish what the payload forged where Harvester reads the pilot's
    declarations; as a linked input, the pilot would write its own file through the link to the replica."""
    definition, data = copy_job(HOSTILE)
    forged = f'{{"{HOSTILE}": [{{"type": "output", "path": "/etc/shadow"}}]}}'
    definition.update(transformation="bash", jobPars=f"-c 'echo {shlex.quote(forged)} > {value}'",
                      **{field: value if field != "outFiles" else f"{value},log.{HOSTILE}.job.log.tgz"})
    if field == "inFiles":
        data = {value: b"replica, never to be written"}
        definition = with_inputs({**definition, "transferType": "direct"}, data)
    ap = worker(tmp_path, definition, data)
    run = run_pilot(ap, "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, HOSTILE, 1371, field, value, "keeps for itself")
    dump = ap / str(HOSTILE) / "event_status.dump.json"
    entries = json.loads(dump.read_text())[str(HOSTILE)] if dump.exists() else []
    assert all(entry["path"].startswith(str(ap)) for entry in entries), entries
    replicas = [path for path in tmp_path.rglob(value) if path.is_file() and not path.is_symlink()]
    assert all(path.read_bytes() == b"replica, never to be written" for path in replicas if field == "inFiles")
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_relative_replica_path_may_not_leave_the_job_directory(tmp_path: Path) -> None:
    """``inFilePaths`` is Harvester's: absolute, or relative inside the job directory, never ``../``."""
    definition, data = copy_job(HOSTILE)
    decoy_dir(tmp_path)
    definition["inFilePaths"] = "../../elsewhere/decoy.txt"
    definition["fsize"] = str(len(DECOY))
    definition["checksum"] = "NULL"
    run = run_pilot(worker(tmp_path, definition, data), "mpi2")
    assert_failed_with(run, HOSTILE, 1371, "../../elsewhere/decoy.txt", "leads out of the job directory")
    assert DECOY not in published_bytes(run.access_point)
    assert_bystanders_finished(run)


# -- what the payload leaves in scratch --------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["payload.stdout", "payload.stderr", "pilot.log", "jobReport.json"])
@pytest.mark.parametrize("target", ["/etc/shadow", "decoy"])
def test_payload_symlinks_in_log_files_are_not_followed(tmp_path: Path, name: str, target: str) -> None:
    decoy = decoy_dir(tmp_path) / "decoy.txt"
    target = str(decoy) if target == "decoy" else target
    definition = job_definition(HOSTILE, "ln", f"-sf {target} {name}")
    run = run_pilot(worker(tmp_path, definition), "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    published = published_bytes(run.access_point)
    assert SHADOW_MARK not in published and DECOY not in published
    assert all(member.isfile() for member in log_tarball_members(run, HOSTILE)), "a link went into the tarball"
    assert json.loads((run.job_dir(HOSTILE) / "jobReport.json").read_text())["pilot"]["pandaid"] == HOSTILE
    assert (tmp_path / "elsewhere" / "decoy.txt").read_bytes() == DECOY
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", ["/etc/shadow", "decoy", "../../../elsewhere/decoy.txt"])
def test_output_symlink_out_of_scratch_is_refused(tmp_path: Path, target: str) -> None:
    """The relative target climbs from <scratch>/hpcpilot-<pid>-<random>/job-<PandaID>-<random>/ to the decoy."""
    decoy = decoy_dir(tmp_path) / "decoy.txt"
    target = str(decoy) if target == "decoy" else target
    definition = with_outputs(job_definition(HOSTILE, "ln", f"-s {target} result.out"), ["result.out"])
    run = run_pilot(worker(tmp_path, definition), "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert str(decoy) in run.attributes(HOSTILE)["pilotErrorDiag"] or target == "/etc/shadow"
    assert_failed_with(run, HOSTILE, 1303, "result.out", "outside scratch")
    assert not (run.job_dir(HOSTILE) / "result.out").exists()
    published = published_bytes(run.access_point)
    assert SHADOW_MARK not in published and DECOY not in published
    assert_bystanders_finished(run)


REPLACE_SCRATCH = 'cd / && rm -rf "$HPCPILOT_SCRATCH" && ln -s {decoy} "$HPCPILOT_SCRATCH"'


def _scratch_replacing_job(tmp_path: Path) -> tuple[Path, Path]:
    """The payload swaps its own scratch directory for a symlink to a directory that holds its 'outputs'."""
    decoy = decoy_dir(tmp_path)
    for name in ("result.out", "payload.stdout", "pilot.log"):
        (decoy / name).write_bytes(DECOY)
    definition = with_outputs(job_definition(HOSTILE, "bash", f"-c '{REPLACE_SCRATCH.format(decoy=decoy)}'"),
                              ["result.out"])
    return worker(tmp_path, definition), decoy


@pytest.mark.timeout(120)
def test_payload_replacing_its_scratch_by_a_symlink_publishes_nothing_from_there(tmp_path: Path) -> None:
    ap, decoy = _scratch_replacing_job(tmp_path)
    run = run_pilot(ap, "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, HOSTILE, 1303, "replaced")
    assert DECOY not in published_bytes(ap)
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_payload_replacing_its_scratch_by_a_symlink_gets_nothing_written_there(tmp_path: Path) -> None:
    ap, decoy = _scratch_replacing_job(tmp_path)
    before = {p.name for p in decoy.iterdir()}
    run_pilot(ap, "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert {p.name for p in decoy.iterdir()} - before == set()
    assert all((decoy / name).read_bytes() == DECOY for name in before if name != "decoy.txt")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", [
    "jobReport.json",
    "payload.stdout", "result.out"])
def test_payload_fifo_does_not_hang_the_pilot(tmp_path: Path, name: str) -> None:
    """A FIFO nobody writes to: opening it for reading would block the stage-out for ever."""
    definition = with_outputs(job_definition(HOSTILE, "bash", f"-c 'rm -f {name}; mkfifo {name}'"), ["result.out"])
    run = run_pilot(worker(tmp_path, definition), "mpi2", "--scratch", str(tmp_path / "scratch"), timeout=30)
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(HOSTILE)
    assert attributes["jobStatus"] == "failed" and attributes["pilotErrorCode"] in (1165, 1303), attributes
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["result.out", "payload.stdout", "jobReport.json"])
def test_a_payload_symlink_loop_fails_only_its_job_which_is_declared_with_its_log(tmp_path: Path, name: str) -> None:
    """A link to itself: every open or stat of it fails with ELOOP, which is no 'file not found'."""
    definition = with_outputs(job_definition(HOSTILE, "bash", f"-c 'rm -f {name}; ln -s {name} {name}'"),
                              ["result.out"])
    run = run_pilot(worker(tmp_path, definition), "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert run.returncode == 0, run.stderr[-3000:]
    attributes = run.attributes(HOSTILE)
    assert attributes["jobStatus"] == "failed" and attributes["pilotErrorCode"] in (1165, 1303), attributes
    assert "result.out" in attributes["pilotErrorDiag"], attributes
    assert [entry["type"] for entry in run.declared(HOSTILE)] == ["log"]
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_an_output_the_payload_made_a_directory_is_missing_and_the_diagnostic_says_why(tmp_path: Path) -> None:
    """'was not produced' sent whoever read it looking for a payload that never wrote the file."""
    definition = with_outputs(job_definition(HOSTILE, "mkdir", "-p result.out/inner"), ["result.out"])
    run = run_pilot(worker(tmp_path, definition), "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, HOSTILE, 1165, "result.out", "is a directory")
    assert not (run.job_dir(HOSTILE) / "result.out").exists()
    assert [entry["type"] for entry in run.declared(HOSTILE)] == ["log"]
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["000", "500"])
def test_a_directory_the_payload_locked_does_not_keep_its_scratch_on_the_node(tmp_path: Path, mode: str) -> None:
    """Without root's override of file modes, as a pilot runs on HPC nodes: a directory the payload left
    without write or search permission kept the job's whole scratch on the node's disk, without a word."""
    definition, data = copy_job(HOSTILE)
    definition.update(transformation="bash", jobPars=f"-c 'tr a-z A-Z < in.{HOSTILE} > out.{HOSTILE}; "
                                                    f"mkdir -p cache/inner; echo x > cache/inner/f; "
                                                    f"chmod {mode} cache/inner cache'")
    scratch = tmp_path / "scratch"
    run = run_pilot_under(WITHOUT_DAC_OVERRIDE, worker(tmp_path, definition, data), "mpi2", "--scratch", str(scratch))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(HOSTILE)["jobStatus"] == "finished"
    assert list(scratch.iterdir()) == []  # each rank's own directory went with its jobs'
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_a_process_the_payload_left_writing_in_its_scratch_does_not_keep_the_scratch_on_the_node(
        tmp_path: Path) -> None:
    """Processes that left the payload's session are ended at the monitor's next sweep (30 s): until then
    they created files faster than the scratch was removed, and it stayed, thousands of files, for good."""
    writer = shlex.quote("while :; do : > f.$RANDOM; done")
    definition, data = copy_job(HOSTILE)
    definition.update(transformation="bash", jobPars="-c " + shlex.quote(
        f"tr a-z A-Z < in.{HOSTILE} > out.{HOSTILE}; "
        f"for writer in 1 2; do setsid bash -c {writer} </dev/null >/dev/null 2>&1 & done; "
        "until [ $(ls | wc -l) -gt 3000 ]; do sleep 0.05; done"))  # they run before the payload ends
    scratch = tmp_path / "scratch"
    run = run_pilot(worker(tmp_path, definition, data), "mpi2", "--scratch", str(scratch))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(HOSTILE)["jobStatus"] == "finished"
    assert list(scratch.iterdir()) == []
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("report", ['{"executor": 5}', "[" * 30000 + "]" * 30000, '{"executor": [7, {"x": 1}]}'],
                         ids=["executor-not-a-list", "nested-too-deeply", "executors-not-objects"])
def test_a_payload_job_report_the_pilot_cannot_use_costs_the_job_nothing(tmp_path: Path, report: str) -> None:
    """The payload's own jobReport.json is its business: one of any shape is passed on as it is, one that
    cannot be read gives way to the pilot's minimal report; the job's outputs and log are declared as always."""
    definition, data = copy_job(HOSTILE)
    report_file = tmp_path / "report.json"
    report_file.write_text(report)
    definition["transformation"] = "bash"
    definition["jobPars"] = f"-c 'tr a-z A-Z < in.{HOSTILE} > out.{HOSTILE} && cp {report_file} jobReport.json'"
    run = run_pilot(worker(tmp_path, definition, data), "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(HOSTILE)["jobStatus"] == "finished"
    published = json.loads((run.job_dir(HOSTILE) / "jobReport.json").read_text())
    assert published == (json.loads(report) if report.startswith("{") else {"exitCode": 0, "exitMsg": "OK", "pilot": {
        "pandaid": HOSTILE, "transExitCode": 0}})  # the payload's own, or the pilot's if that cannot be used
    entries = json.loads((run.job_dir(HOSTILE) / "event_status.dump.json").read_text())[str(HOSTILE)]
    assert sorted(entry["type"] for entry in entries) == ["log", "output"]
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_a_job_report_that_cannot_be_written_does_not_keep_the_job_from_being_declared(tmp_path: Path) -> None:
    definition, data = copy_job(HOSTILE)
    ap = worker(tmp_path, definition, data)
    (ap / str(HOSTILE) / "jobReport.json").mkdir()
    run = run_pilot(ap, "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert run.attributes(HOSTILE)["jobStatus"] == "finished"
    assert (run.job_dir(HOSTILE) / "event_status.dump.json").exists()
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_only_the_ends_of_a_payload_stdout_over_the_limit_go_into_the_log_tarball(tmp_path: Path) -> None:
    """A sparse file of any size takes the payload no time to make, and would take the pilot hours to pack:
    its first and last MB go in. The job fails for it (1106) as a longer one would at the disk check, even
    though it ended first."""
    definition, data = copy_job(HOSTILE)
    definition.update(transformation="bash", jobPars=f"-c 'tr a-z A-Z < in.{HOSTILE} > out.{HOSTILE}; "
                                                    "truncate -s 3M payload.stdout'")
    run = run_pilot(worker(tmp_path, definition, data), "mpi2", env={"HPCPILOT_LIMITS__MAX_STDOUT_MB": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, HOSTILE, 1106, "payload stdout 3.0 MB exceeded limit 1 MB")
    stdout = tarball_file(run, HOSTILE, "payload.stdout")
    gap = b"\n[hpcpilot: 1048576 bytes left out here; payload.stdout was 3145728 bytes, over max_stdout_mb]\n"
    assert stdout == bytes(MB) + gap + bytes(MB)
    assert "only its first and last 1 MB go into the log tarball" in run.stderr
    assert_bystanders_finished(run)


STDOUT_WITH_SECRETS = b"""\
import sys
secret, mb = sys.argv[1].encode(), 1 << 20
data = bytearray(b"x" * 3 * mb)
for at in (0, mb - len(secret) // 2, 2 * mb - len(secret) // 2, 3 * mb - len(secret)):  # cut in two at both cuts
    data[at:at + len(secret)] = secret
sys.stdout.buffer.write(data)
"""


@pytest.mark.timeout(120)
def test_the_ends_of_a_payload_stdout_over_the_limit_carry_no_secret_not_even_half_of_one(tmp_path: Path) -> None:
    script = {"write.py": STDOUT_WITH_SECRETS}
    definition = with_inputs(job_definition(HOSTILE, "python3", f"write.py {SECRET}", pilotSecrets=SECRET), script)
    run = run_pilot(worker(tmp_path, definition, script), "grid", env={"HPCPILOT_LIMITS__MAX_STDOUT_MB": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    stdout = tarball_file(run, HOSTILE, "payload.stdout")
    assert stdout.startswith(b"***xxx") and stdout.endswith(b"xxx***") and b"bytes left out here" in stdout
    half = len(SECRET) // 2
    assert SECRET[:half].encode() not in stdout and SECRET[half:].encode() not in stdout
    assert not _leaks(run, HOSTILE, (SECRET,))


def tarball_file(run, pandaid: int, name: str) -> bytes:
    entry = next(e for e in run.declared(pandaid) if e["type"] == "log")
    with tarfile.open(entry["path"]) as tar:
        return tar.extractfile(f"log.{pandaid}/{name}").read()


# -- the job directory itself -----------------------------------------------------------------------


def _symlinked_job_dir(tmp_path: Path, inside: bool) -> tuple[Path, Path]:
    """Job HOSTILE's directory is laid out elsewhere, and ``ap/<PandaID>`` is a symlink to it."""
    definition, data = copy_job(HOSTILE)
    ap = worker(tmp_path, definition, data)
    real = (ap / ".harvester-jobs" if inside else tmp_path / "elsewhere-jobs") / str(HOSTILE)
    real.parent.mkdir()
    shutil.move(ap / str(HOSTILE), real)
    (ap / str(HOSTILE)).symlink_to(real, target_is_directory=True)
    return ap, real


@pytest.mark.timeout(120)
def test_job_directory_symlinked_inside_the_access_point_is_used(tmp_path: Path) -> None:
    ap, real = _symlinked_job_dir(tmp_path, inside=True)
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(HOSTILE)["jobStatus"] == "finished"
    assert (real / f"out.{HOSTILE}").exists()
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_job_directory_symlinked_out_of_the_access_point_is_refused(tmp_path: Path) -> None:
    ap, real = _symlinked_job_dir(tmp_path, inside=False)
    before = sorted(p.name for p in real.iterdir())
    run = run_pilot(ap, "mpi2")
    assert_bystanders_finished(run)
    assert sorted(p.name for p in real.iterdir()) == before, "the pilot wrote outside the access point"
    (row,) = [job for job in run.summary()["jobs"] if job["pandaid"] == HOSTILE]
    assert (row["status"], row["code"]) == ("failed", 1303) and "symlink" in row["diag"], row
    assert run.returncode == 64, "a job that cannot be declared is a site problem"


@pytest.mark.timeout(120)
def test_job_directory_symlinked_out_is_refused_on_a_rerun_too(tmp_path: Path) -> None:
    """A rerun reads earlier states and removes interrupted jobs' journals and temp files: never through a
    job directory that leads out of the access point."""
    ap, real = _symlinked_job_dir(tmp_path, inside=False)
    (ap / ".hpcpilot").mkdir()  # as an earlier run leaves it: the rerun looks at every job
    (real / ".hpcpilot-pending.json").write_text('{"6666": []}')
    (real / ".hpcpilot-tmp-keepme").write_text("not the pilot's")
    (real / "worker_attributes.json").write_text('{"jobStatus": "finished"}')
    before = sorted(p.name for p in real.iterdir())
    run = run_pilot(ap, "mpi2")
    assert sorted(p.name for p in real.iterdir()) == before, "the pilot touched files outside the access point"
    (row,) = [job for job in run.summary()["jobs"] if job["pandaid"] == HOSTILE]
    assert (row["status"], row["code"]) == ("failed", 1303), row
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_a_run_lock_symlinked_out_of_the_access_point_creates_nothing_there(tmp_path: Path) -> None:
    """The pilot's run lock is opened without following a link: a planted one costs only the lock (a warning),
    never a file created where it points."""
    definition, data = copy_job(HOSTILE)
    ap = worker(tmp_path, definition, data)
    (ap / ".hpcpilot").mkdir()
    (ap / ".hpcpilot" / "run.lock").symlink_to(tmp_path / "planted")
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "planted").exists(), "the pilot created a file outside the access point"
    assert "cannot create" in run.stderr and "run.lock" in run.stderr
    assert_bystanders_finished(run)


# -- file modes -------------------------------------------------------------------------------------


def _world_writable_after_run(tmp_path: Path, listed_without_directory: list[int]) -> dict[str, str]:
    """Run under umask 000, so only modes the pilot sets itself keep what it creates private."""
    definitions, inputs = with_bystanders({}, {})
    definitions[HOSTILE] = job_definition(HOSTILE, "false")
    definitions[HOSTILE + 1] = job_definition(HOSTILE + 1, "true", coreCount="many")  # declared invalid
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    (ap / "worker_pandaids.json").write_text(json.dumps([*definitions, *listed_without_directory]))
    unconsumed = {str(GOOD_IDS[0]): [{"eventRangeID": "1-2-3-4-5", "eventStatus": "finished"}]}
    (ap / str(GOOD_IDS[0]) / "event_status.dump.json").write_text(json.dumps(unconsumed))  # a journal is kept
    before = set(ap.rglob("*"))
    run = run_pilot_under(WITH_UMASK_000, ap, "mpi2", "--scratch", str(tmp_path / "scratch"))
    assert run.returncode == 0, run.stderr[-3000:]
    created = set(ap.rglob("*")) - before
    assert {ap / "hpcpilot_summary.json", ap / str(HOSTILE + 1) / "worker_attributes.json"} <= created
    return {str(p.relative_to(ap)): oct(p.lstat().st_mode) for p in created
            if not p.is_symlink() and p.lstat().st_mode & stat.S_IWOTH}


@pytest.mark.timeout(120)
def test_nothing_the_pilot_creates_in_the_access_point_is_world_writable(tmp_path: Path) -> None:
    assert not _world_writable_after_run(tmp_path, [])


@pytest.mark.timeout(120)
def test_job_directory_the_pilot_creates_is_not_world_writable(tmp_path: Path) -> None:
    assert not _world_writable_after_run(tmp_path, [HOSTILE + 2])


# -- secrets ----------------------------------------------------------------------------------------

SECRET = "s3cr3t-value"
TOKEN = "t0ken-9f8e7d6c"


def _leaks(run, pandaid: int, secrets: tuple[str, ...]) -> dict[str, list[str]]:
    """Where each secret shows: the pilot's output, its per-job log, jobReport.json, the Harvester files."""
    places = {"stderr": run.stderr, "stdout": run.stdout}
    job_dir = run.job_dir(pandaid)
    for name in ("jobReport.json", "worker_attributes.json"):
        if (job_dir / name).exists():
            places[name] = (job_dir / name).read_text()
    places["hpcpilot_summary.json"] = (run.access_point / "hpcpilot_summary.json").read_text()
    if (job_dir / "event_status.dump.json").exists():
        entry = next(e for e in run.declared(pandaid) if e["type"] == "log")
        with tarfile.open(entry["path"]) as tar:
            for member in tar.getmembers():
                places["tarball:" + member.name] = tar.extractfile(member).read().decode(errors="replace")
    return {secret: [where for where, text in places.items() if secret in text] for secret in secrets
            if any(secret in text for text in places.values())}


@pytest.mark.timeout(120)
def test_pilot_secrets_field_is_never_echoed(tmp_path: Path) -> None:
    """The value of ``pilotSecrets`` is in the definition only: not logged even at DEBUG, valid job or not."""
    definitions, inputs = with_bystanders({}, {})
    definitions[HOSTILE] = job_definition(HOSTILE, "false", pilotSecrets=SECRET)
    definitions[HOSTILE + 1] = job_definition(HOSTILE + 1, "true", coreCount="x", pilotSecrets=SECRET)
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    run = run_pilot(ap, "mpi2", "--log-level", "DEBUG")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not _leaks(run, HOSTILE, (SECRET,))
    assert not _leaks(run, HOSTILE + 1, (SECRET,))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("field", [{"pilotSecrets": SECRET}, {"secrets": json.dumps({"MY_S3_KEY": SECRET})}],
                         ids=["pilotSecrets", "user secrets"])
def test_pilot_secrets_value_is_redacted_where_the_payload_uses_it(tmp_path: Path, field: dict) -> None:
    """A command line that carries the secret is logged, and the payload's own report repeats it. PanDA passes
    the pilot's secrets in ``pilotSecrets`` and the user's in ``secrets`` (a JSON object of name: value)."""
    script = {"report.sh": b'printf \'{"exitCode": 0, "argv": "%s"}\' "$*" > jobReport.json\n'}
    definition = with_inputs(job_definition(HOSTILE, "bash", f"report.sh --key {SECRET}", **field), script)
    run = run_pilot(worker(tmp_path, definition, script), "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((run.job_dir(HOSTILE) / "jobReport.json").read_text())["exitCode"] == 0
    assert not _leaks(run, HOSTILE, (SECRET,))


@pytest.mark.timeout(120)
def test_a_secret_that_json_escapes_is_redacted_in_the_payload_report(tmp_path: Path) -> None:
    """Quotes, backslashes and non-ASCII are escaped in JSON text: the report's decoded strings are searched."""
    secret = 'p\\ä"ss-42'
    script = {"report.py": b"import json, sys\njson.dump({'exitCode': 0, 'argv': sys.argv[1:]}, open('jobReport.json', 'w'))\n"}
    definition = with_inputs(job_definition(HOSTILE, "python3", f"report.py --key {shlex.quote(secret)}",
                                            pilotSecrets=secret), script)
    run = run_pilot(worker(tmp_path, definition, script), "grid")
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((run.job_dir(HOSTILE) / "jobReport.json").read_text())
    assert report == {"exitCode": 0, "argv": ["--key", "***"]}


@pytest.mark.timeout(120)
def test_configured_secret_keys_are_redacted(tmp_path: Path) -> None:
    definition = job_definition(HOSTILE, "echo", f"token={TOKEN}", myToken=TOKEN, pilotSecrets=SECRET)
    run = run_pilot(worker(tmp_path, definition), "mpi2", "--log-level", "DEBUG",
                    env={"HPCPILOT_SECRET_KEYS": "myToken"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(HOSTILE)["jobStatus"] == "finished"
    assert not _leaks(run, HOSTILE, (TOKEN, SECRET))


@pytest.mark.timeout(120)
def test_a_payload_output_replaced_by_a_directory_in_a_job_with_secrets_costs_only_that_file(tmp_path: Path) -> None:
    """Redaction opened payload.stdout (a directory now) as a file: the job got 1008, no log tarball, exit 64."""
    definition = job_definition(HOSTILE, "bash", f"-c 'echo {SECRET} >&2; rm payload.stdout; mkdir payload.stdout'",
                                pilotSecrets=SECRET)
    run = run_pilot(worker(tmp_path, definition), "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(HOSTILE)["jobStatus"] == "finished"
    assert [entry["type"] for entry in run.declared(HOSTILE)] == ["log"]
    assert not _leaks(run, HOSTILE, (SECRET,))
    assert_bystanders_finished(run)


@pytest.mark.timeout(120)
def test_a_job_with_secrets_that_filled_its_scratch_is_declared_for_the_space_and_leaks_nothing(
        tmp_path: Path, small_tmpfs: Path) -> None:
    """Redaction writes a blanked copy of payload.stdout beside it: in a full scratch that copy cannot be
    made. The job must still be declared (1098, with its log tarball), the unredacted output left out."""
    fill = f"-c 'for i in $(seq 20000); do echo {SECRET}; done; head -c 2000000 /dev/zero > big'"
    definition = job_definition(HOSTILE, "bash", fill, pilotSecrets=SECRET)
    ap = write_access_point(tmp_path / "ap", {HOSTILE: definition})
    run = run_pilot(ap, "grid", "--scratch", str(small_tmpfs))
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, HOSTILE, 1098, "free space in scratch")
    assert [entry["type"] for entry in run.declared(HOSTILE)] == ["log"]
    assert not _leaks(run, HOSTILE, (SECRET,))
