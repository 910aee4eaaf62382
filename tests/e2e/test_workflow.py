"""The whole pilot, for real, on Harvester-style access points: every job ends declared with its code."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs, write_access_point
from hpcpilot.config import HarvesterFiles

from .conftest import LAUNCHES, assert_declared_file_matches, communicate_or_kill, run_pilot, tarball_members

GOOD = [101, 102, 103, 104, 105, 106]
FAILING_PAYLOAD, MISSING_INPUT, BAD_ADLER, BAD_MD5 = 201, 202, 203, 204
MISSING_OUTPUT, EMPTY_OUTPUT, UNEQUAL_LISTS, DOTDOT_LFN, SEGFAULT = 205, 206, 207, 208, 209
OUTSIDE_SYMLINK = 210
EXPECTED_CODES = {
    FAILING_PAYLOAD: 1305, MISSING_INPUT: 1099, BAD_ADLER: 1171, BAD_MD5: 1145, MISSING_OUTPUT: 1165,
    EMPTY_OUTPUT: 1350, UNEQUAL_LISTS: 1312, DOTDOT_LFN: 1371, SEGFAULT: 1203, OUTSIDE_SYMLINK: 1303,
}


def _input_bytes(pandaid: int) -> bytes:
    return f"input of job {pandaid}\n".encode() * (pandaid % 7 + 1)


def copy_job(pandaid: int, **fields) -> tuple[dict, dict]:
    """A job that turns its input into an upper-cased output (real bytes to check)."""
    data = {f"in.{pandaid}": _input_bytes(pandaid)}
    definition = job_definition(pandaid, "tr", f"a-z A-Z < in.{pandaid} > out.{pandaid}", **fields)
    return with_outputs(with_inputs(definition, data), [f"out.{pandaid}"]), data


def catalogue() -> tuple[dict, dict]:
    """Good jobs and one job per failure the issue names."""
    definitions, inputs = {}, {}
    for pandaid in GOOD + [MISSING_INPUT, BAD_ADLER, BAD_MD5, UNEQUAL_LISTS, DOTDOT_LFN]:
        definitions[pandaid], inputs[pandaid] = copy_job(pandaid)
    del inputs[MISSING_INPUT]
    definitions[BAD_ADLER]["checksum"] = "ad:0badc0de"
    definitions[BAD_MD5]["checksum"] = "md:" + "0" * 32
    definitions[UNEQUAL_LISTS]["fsize"] = "1,2"
    definitions[DOTDOT_LFN]["outFiles"] = "../escape.txt," + definitions[DOTDOT_LFN]["logFile"]
    definitions[FAILING_PAYLOAD] = job_definition(FAILING_PAYLOAD, "echo", "about to fail; exit 5")
    definitions[MISSING_OUTPUT] = with_outputs(job_definition(MISSING_OUTPUT, "true"), ["never.txt"])
    definitions[EMPTY_OUTPUT] = with_outputs(job_definition(EMPTY_OUTPUT, "touch", "empty.txt"), ["empty.txt"])
    definitions[SEGFAULT] = job_definition(SEGFAULT, "kill", "-SEGV $$")
    definitions[OUTSIDE_SYMLINK] = with_outputs(job_definition(OUTSIDE_SYMLINK, "ln", "-s /etc/passwd out.txt"),
                                                ["out.txt"])
    return definitions, inputs


@pytest.fixture
def catalogue_ap(tmp_path: Path) -> Path:
    definitions, inputs = catalogue()
    return write_access_point(tmp_path / "ap", definitions, inputs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_every_job_is_declared_with_its_code(catalogue_ap: Path, launch: str) -> None:
    run = run_pilot(catalogue_ap, launch, "--cores-per-rank", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    for pandaid in GOOD:
        attributes = run.attributes(pandaid)
        assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("finished", 0), attributes
        entries = {entry["type"]: entry for entry in run.declared(pandaid)}
        assert set(entries) == {"output", "log"}
        assert assert_declared_file_matches(entries["output"]) == _input_bytes(pandaid).upper()
        assert_declared_file_matches(entries["log"])
    for pandaid, code in EXPECTED_CODES.items():
        attributes = run.attributes(pandaid)
        assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", code), attributes
        assert attributes["pilotErrorDiag"]
    summary = run.summary()
    assert len(summary["jobs"]) == len(GOOD) + len(EXPECTED_CODES)
    used_ranks = {job["rank"] for job in summary["jobs"] if job["pandaid"] in GOOD}
    assert len(used_ranks) == int(launch[-1]) if launch != "grid" else used_ranks == {0}


@pytest.mark.timeout(120)
def test_failed_job_details(catalogue_ap: Path) -> None:
    run = run_pilot(catalogue_ap)
    assert run.attributes(FAILING_PAYLOAD)["transExitCode"] == 5
    assert "'fsize': has 2 entries for 1 files" in run.attributes(UNEQUAL_LISTS)["pilotErrorDiag"]
    assert "../escape.txt" in run.attributes(DOTDOT_LFN)["pilotErrorDiag"]
    assert not (catalogue_ap / "escape.txt").exists()
    assert not (catalogue_ap / str(OUTSIDE_SYMLINK) / "out.txt").exists()
    log_entry = next(e for e in run.declared(OUTSIDE_SYMLINK) if e["type"] == "log")
    assert b"root:" not in b"".join(tarball_members(Path(log_entry["path"])).values())
    failed_log = next(e for e in run.declared(FAILING_PAYLOAD) if e["type"] == "log")
    members = tarball_members(Path(failed_log["path"]))
    assert members["payload.stdout"] == b"about to fail\n"
    assert set(members) == {"payload.stdout", "payload.stderr", "pilot.log", "jobReport.json"}
    assert b"payload exited with code 5" in members["pilot.log"]
    assert json.loads(members["jobReport.json"])["exitCode"] == 1305


# The types the PanDA server's update_job (pandaserver/api/v1/pilot_api.py) takes for the attributes Harvester
# forwards unchanged (JobSpec.get_job_attributes_for_panda); its request_validation refuses the whole update of
# a job for one value of another type (a bool passes for an int, as isinstance says).
SERVER_TYPES = {
    "cpuConsumptionTime": int, "transExitCode": int, "pilotErrorCode": int, "exeErrorCode": int, "nEvents": int,
    "nInputFiles": int, "attemptNr": int, "coreCount": int, "cpuConversionFactor": (float, int),
    **dict.fromkeys(("node", "cpuConsumptionUnit", "schedulerID", "pilotID", "siteName", "pilotLog",
                     "pilotErrorDiag", "exeErrorDiag", "pilotTiming", "startTime", "endTime", "batchID",
                     "jobMetrics", "stdout"), str),
    **{f"{stat}{key}": (int, float) for stat in ("max", "avg") for key in ("RSS", "VMEM", "SWAP", "PSS")},
    **{f"{stat}{key}": (int, float) for stat in ("tot", "rate") for key in ("RCHAR", "WCHAR", "RBYTES", "WBYTES")},
}


def assert_types_the_panda_server_accepts(attributes: dict) -> None:
    wrong = {key: value for key, value in attributes.items()
             if key in SERVER_TYPES and not isinstance(value, SERVER_TYPES[key])}
    assert not wrong, f"PanDA would refuse the job's update for {wrong}"


@pytest.mark.timeout(120)
def test_a_job_asking_for_more_cores_than_the_rank_has_runs_on_them_and_says_so(tmp_path: Path) -> None:
    definition, data = copy_job(302, coreCount=8)
    run = run_pilot(write_access_point(tmp_path / "ap", {302: definition}, {302: data}), "grid",
                    "--cores-per-rank", "2")
    assert run.attributes(302)["jobStatus"] == "finished" and run.attributes(302)["coreCount"] == 2
    assert "asks for 8 cores, the rank has 2: runs on 2" in run.stderr


@pytest.mark.timeout(120)
def test_good_job_declarations_follow_the_protocol(tmp_path: Path) -> None:
    definition, data = copy_job(301, coreCount=2, attemptNr=3)
    definition["logGUID"] = "log-guid-301"
    ap = write_access_point(tmp_path / "ap", {301: definition}, {301: data})
    run = run_pilot(ap, "grid", "--cores-per-rank", "4")
    attributes = run.attributes(301)
    for key in ("startTime", "endTime"):
        time.strptime(attributes[key], "%Y-%m-%d %H:%M:%S")
    assert attributes["coreCount"] == 2 and attributes["attemptNr"] == 3 and attributes["nInputFiles"] == 1
    assert attributes["pilotTiming"].count("|") == 4
    assert "coreCount=2" in attributes["jobMetrics"]
    assert attributes["node"]
    assert_types_the_panda_server_accepts(attributes)
    log_entry = next(e for e in run.declared(301) if e["type"] == "log")
    assert log_entry["guid"] == "log-guid-301"
    report = json.loads((ap / "301" / "jobReport.json").read_text())
    assert report["exitCode"] == 0


@pytest.mark.timeout(120)
def test_the_payloads_own_error_from_its_report_is_declared_as_exe_error(tmp_path: Path) -> None:
    """Pilot 3 takes exeErrorCode/exeErrorDiag from the payload's report: a transform says why it failed there."""
    failing = ('echo "{\\"exitCode\\": 65, \\"exitMsg\\": \\"TRF_EXEC_FAIL: Non-zero return code\\"}" '
               '> jobReport.json; exit 65')
    passing = 'echo "{\\"exitCode\\": 0, \\"exitMsg\\": \\"OK\\"}" > jobReport.json'
    definitions = {1801: job_definition(1801, "bash", f"-c '{failing}'"),
                   1802: job_definition(1802, "bash", f"-c '{passing}'")}
    run = run_pilot(write_access_point(tmp_path / "ap", definitions), "grid")
    failed, finished = run.attributes(1801), run.attributes(1802)
    assert (failed["transExitCode"], failed["exeErrorCode"]) == (65, 65), failed
    assert failed["exeErrorDiag"] == "TRF_EXEC_FAIL: Non-zero return code", failed
    assert finished["exeErrorCode"] == 0 and "exeErrorDiag" not in finished, finished
    assert_types_the_panda_server_accepts(failed)


@pytest.mark.timeout(120)
def test_payload_report_environment_and_parallel_slots(tmp_path: Path) -> None:
    """Four 1-core jobs on a 4-core rank run at once, each seeing its PandaID, rank and cores."""
    script = ('echo "{\\"pandaid\\": \\"$PANDAID\\", \\"rank\\": \\"$HPCPILOT_RANK\\", '
              '\\"cores\\": \\"$ATHENA_PROC_NUMBER\\", \\"omp\\": \\"$OMP_NUM_THREADS\\"}" > jobReport.json; '
              'date +%s.%N > start; sleep 1.5; date +%s.%N > stop; cat start stop > times.txt')
    definitions = {p: with_outputs(job_definition(p, "bash", f"-c '{script}'"), ["times.txt"])
                   for p in range(401, 405)}
    ap = write_access_point(tmp_path / "ap", definitions)
    assert run_pilot(ap, "grid", "--cores-per-rank", "4").returncode == 0
    windows = []
    for pandaid in definitions:
        report = json.loads((ap / str(pandaid) / "jobReport.json").read_text())
        assert report == {"pandaid": str(pandaid), "rank": "0", "cores": "", "omp": "1"}
        start, stop = map(float, (ap / str(pandaid) / "times.txt").read_text().split())
        windows.append((start, stop))
    assert max(start for start, _ in windows) < min(stop for _, stop in windows), "payloads did not overlap"


@pytest.mark.timeout(120)
def test_core_counts_exported_for_the_batch_job_give_way_to_each_job_s(tmp_path: Path) -> None:
    """A whole node's counts in the pilot's environment: a one-core job gets no ATHENA_PROC_NUMBER (it would run
    Athena multi-process, 16 workers on its one core), a two-core job 2 everywhere."""
    line = 'echo "$OMP_NUM_THREADS ${ATHENA_CORE_NUMBER-unset} ${ATHENA_PROC_NUMBER-unset}" > counts.txt'
    definitions = {p: with_outputs(job_definition(p, "bash", f"-c '{line}'", coreCount=cores), ["counts.txt"])
                   for p, cores in ((511, 1), (512, 2))}
    ap = write_access_point(tmp_path / "ap", definitions)
    node = {"OMP_NUM_THREADS": "16", "ATHENA_CORE_NUMBER": "16", "ATHENA_PROC_NUMBER": "16"}
    assert run_pilot(ap, "grid", "--cores-per-rank", "2", env=node).returncode == 0
    assert (ap / "511" / "counts.txt").read_text().split() == ["1", "1", "unset"]
    assert (ap / "512" / "counts.txt").read_text().split() == ["2", "2", "2"]


@pytest.mark.timeout(120)
def test_multicore_jobs_share_a_rank_by_core_count(tmp_path: Path) -> None:
    """Two 2-core jobs on a 3-core rank never run at the same time."""
    command = "date +%s.%N > start; sleep 1; date +%s.%N > stop; cat start stop > times.txt"
    definitions = {p: with_outputs(job_definition(p, "bash", f"-c '{command}'", coreCount=2), ["times.txt"])
                   for p in (501, 502)}
    ap = write_access_point(tmp_path / "ap", definitions)
    run_pilot(ap, "grid", "--cores-per-rank", "3")
    (s1, e1), (s2, e2) = (map(float, (ap / str(p) / "times.txt").read_text().split()) for p in definitions)
    assert e1 <= s2 or e2 <= s1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spec_format", ["json", "cgi"])
def test_one_to_one_layout(tmp_path: Path, spec_format: str) -> None:
    from hpcpilot.config import HarvesterFiles

    definition, data = copy_job(601)
    files = HarvesterFiles(job_spec="pandaJobData.out", job_spec_format=spec_format)
    ap = write_access_point(tmp_path / "ap", {601: definition}, {601: data}, files=files, many_to_one=False)
    run = run_pilot(ap, "mpi1", env={"HPCPILOT_FILES__JOB_SPEC": "pandaJobData.out",
                                     "HPCPILOT_FILES__JOB_SPEC_FORMAT": spec_format})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.attributes(601)["jobStatus"] == "finished"
    assert (ap / "out.601").read_bytes() == _input_bytes(601).upper()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["copy", "link", "direct"])
def test_stagein_modes(tmp_path: Path, mode: str) -> None:
    definition, data = copy_job(701)
    ap = write_access_point(tmp_path / "ap", {701: definition}, {701: data})
    scratch = tmp_path / "scratch"
    run = run_pilot(ap, "grid", "--stagein-mode", mode, "--scratch", str(scratch), "--keep-scratch")
    assert run.attributes(701)["jobStatus"] == "finished", run.attributes(701)
    (job_scratch,) = scratch.glob("*/job-701-*")
    assert (job_scratch / "in.701").is_symlink() == (mode != "copy")
    assert (job_scratch / "PoolFileCatalog.xml").exists()


@pytest.mark.timeout(120)
def test_scratch_is_removed_unless_kept(tmp_path: Path) -> None:
    definition, data = copy_job(801)
    ap = write_access_point(tmp_path / "ap", {801: definition}, {801: data})
    run_pilot(ap, "grid", "--scratch", str(tmp_path / "scratch"))
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.timeout(120)
def test_a_relative_scratch_option_gives_the_payload_absolute_paths(tmp_path: Path) -> None:
    """--scratch given relative to the directory the pilot starts in: the payload, which runs in its scratch, was
    given HPCPILOT_SCRATCH and TMPDIR (and an event service payload its channel's socket) relative to the
    pilot's directory, naming nothing from its own; a container runtime refuses such a bind."""
    script = ('touch "$TMPDIR/made-in-tmpdir" && '
              'echo "{\\"scratch\\": \\"$HPCPILOT_SCRATCH\\"}" > jobReport.json')
    ap = write_access_point(tmp_path / "ap", {821: job_definition(821, "bash", f"-c '{script}'")})
    (tmp_path / "start").mkdir()
    run = run_pilot(ap, "grid", "--scratch", "relative-scratch", prefix=("env", "-C", str(tmp_path / "start")))
    assert run.returncode == 0 and run.attributes(821)["jobStatus"] == "finished", run.stderr[-2000:]
    scratch = Path(json.loads((ap / "821" / "jobReport.json").read_text())["scratch"])
    assert scratch.is_absolute() and scratch.is_relative_to(tmp_path / "start" / "relative-scratch")


@pytest.mark.timeout(120)
def test_a_mount_a_root_payload_left_in_scratch_is_unmounted_not_emptied(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the payload bind-mounts a directory: needs root")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.root").write_bytes(b"not the payload's")
    definition = job_definition(811, f"mkdir shown && mount --bind {precious} shown")
    ap = write_access_point(tmp_path / "ap", {811: definition})
    run = run_pilot(ap, "grid", "--scratch", str(tmp_path / "scratch"))
    assert run.returncode == 0 and run.attributes(811)["jobStatus"] == "finished", run.stderr[-3000:]
    assert (precious / "data.root").read_bytes() == b"not the payload's"
    assert list((tmp_path / "scratch").iterdir()) == [] and str(tmp_path / "scratch") not in Path(
        "/proc/self/mountinfo").read_text()


@pytest.mark.timeout(120)
def test_an_unconsumed_dump_is_never_written_to_and_goes_out_with_the_job_s_entries(tmp_path: Path) -> None:
    """Harvester takes a dump once per cycle (minutes): the pilot does not wait for it, nor leave the job's
    entries behind when it ends; the earlier dump is taken back and declared again, first."""
    definition, data = copy_job(901)
    ap = write_access_point(tmp_path / "ap", {901: definition}, {901: data})
    earlier = ap / "901" / "event_status.dump.json"
    earlier_entry = {"eventRangeID": "1-2-3-4-5", "eventStatus": "finished"}
    earlier.write_text(json.dumps({"901": [earlier_entry]}))
    earlier_inode = earlier.stat().st_ino
    run = run_pilot(ap)
    assert run.returncode == 0
    entries = json.loads(earlier.read_text())["901"]
    assert entries[0] == earlier_entry and [e["type"] for e in entries[1:]] == ["output", "log"]
    assert earlier.stat().st_ino != earlier_inode, "the unconsumed file was written to, not replaced by a new one"
    assert not any(p.name.startswith(".hpcpilot-pending") for p in (ap / "901").iterdir())
    assert "wait" not in run.stderr


@pytest.mark.timeout(120)
def test_a_kill_request_left_by_an_earlier_run_is_withdrawn(tmp_path: Path) -> None:
    """A run that gave up asked Harvester to cancel the worker; when the batch system runs the worker again
    (a requeue), that request would get the new run cancelled, so the new run removes it and says so."""
    definition, data = copy_job(951)
    ap = write_access_point(tmp_path / "ap", {951: definition}, {951: data})
    (ap / "kill_worker.json").write_text('{"reason": "rank 1 not heard from for 600 s", "time": 1}')
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (ap / "kill_worker.json").exists()
    assert "removed kill_worker.json, left by an earlier run of this worker" in run.stderr
    assert run.attributes(951)["jobStatus"] == "finished"


@pytest.mark.timeout(60)
def test_worker_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert run_pilot(tmp_path / "empty").returncode == 82
    assert run_pilot(tmp_path / "missing", "mpi2").returncode == 77
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "worker_pandaids.json").write_text("[1, 2")
    bad = run_pilot(tmp_path / "bad")
    assert bad.returncode == 77 and "worker_pandaids.json" in bad.stderr
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "worker_pandaids.json").write_text("[]")
    assert run_pilot(tmp_path / "none", "mpi2").returncode == 82


@pytest.mark.timeout(60)
def test_a_job_spec_under_harvesters_other_name_is_pointed_out(tmp_path: Path) -> None:
    """Harvester's messenger writes pandaJobData.out by default: the pilot looking for HPCJobs.json must say
    which setting to change, not only that its file is missing."""
    hint = "pandaJobData.out is there: set files.job_spec to it (HPCPILOT_FILES__JOB_SPEC=pandaJobData.out)"
    spec = {"PandaID": "2104", "transformation": "true", "jobPars": ""}
    (tmp_path / "many" / "2104").mkdir(parents=True)
    (tmp_path / "many" / "worker_pandaids.json").write_text("[2104]")
    (tmp_path / "many" / "2104" / "pandaJobData.out").write_text(json.dumps({"2104": spec}))
    many = run_pilot(tmp_path / "many")
    assert many.returncode == 0 and hint in many.attributes(2104)["pilotErrorDiag"], many.stderr[-2000:]
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "pandaJobData.out").write_text(json.dumps({"2104": spec}))
    one = run_pilot(tmp_path / "one")
    assert one.returncode == 82 and hint in one.stderr, one.stderr[-2000:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("written, read", [("cgi", "json"), ("json", "cgi")])
def test_a_job_spec_in_the_other_format_is_pointed_out(tmp_path: Path, written, read) -> None:
    """Harvester's jobSpecFileFormat and the pilot's files.job_spec_format disagree: the diagnostic names the
    setting (in cgi it said only "field 'PandaID': None is not a positive integer")."""
    files = HarvesterFiles(job_spec_format=written)
    ap = write_access_point(tmp_path / "ap", {2105: job_definition(2105, "true")}, files=files)
    run = run_pilot(ap, env={"HPCPILOT_FILES__JOB_SPEC_FORMAT": read})
    diag = run.attributes(2105)["pilotErrorDiag"]
    assert run.returncode == 0 and f"HPCPILOT_FILES__JOB_SPEC_FORMAT={written}" in diag, run.stderr[-2000:]


@pytest.mark.timeout(120)
def test_configuration_mistakes_exit_65_before_any_job(tmp_path: Path) -> None:
    """A misspelt site or an unusable file name is the user's mistake: a message, no traceback, no job run."""
    ap = write_access_point(tmp_path / "ap", {2101: job_definition(2101, "true")})
    for options, env, message in [(("--site", "tian"), {}, "no site plugin named 'tian'"),
                                  ((), {"HPCPILOT_SITE_NAME": "nosuch"}, "no site plugin named 'nosuch'"),
                                  ((), {"HPCPILOT_FILES__JOB_SPEC": ""}, "files.job_spec ''")]:
        run = run_pilot(ap, "mpi2", *options, env=env)
        assert run.returncode == 65 and message in run.stderr and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert not (ap / "2101" / "worker_attributes.json").exists()
    without = subprocess.run([sys.executable, "-m", "hpcpilot", "run"], capture_output=True, text=True, timeout=60)
    assert without.returncode == 65 and "the access point is required" in without.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option", ["--access-point", "--scratch"])
def test_an_empty_directory_option_is_refused_not_taken_for_the_current_directory(tmp_path: Path, option) -> None:
    """``--scratch "$LOCAL_SSD"`` with the variable unset must not put scratch where the pilot was started."""
    ap = write_access_point(tmp_path / "ap", {2102: job_definition(2102, "true")})
    argv = [sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap), option, ""]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=50, cwd=tmp_path)
    assert run.returncode == 2 and f"argument {option}: empty" in run.stderr, run.stderr[-2000:]
    assert not (ap / "2102" / "worker_attributes.json").exists()


@pytest.mark.timeout(120)
def test_an_unusable_scratch_option_falls_back_to_node_local_scratch_not_the_shared_filesystem(tmp_path: Path) -> None:
    """README: the shared filesystem only as a last resort. A --scratch that cannot be created went straight
    there, past a usable $TMPDIR."""
    ap = write_access_point(tmp_path / "ap", {2103: job_definition(2103, "true")})
    (tmp_path / "file").write_text("")
    (tmp_path / "tmp").mkdir()
    run = run_pilot(ap, "grid", "--scratch", str(tmp_path / "file" / "scratch"), "--keep-scratch",
                    env={"TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 0 and run.attributes(2103)["jobStatus"] == "finished", run.stderr[-2000:]
    assert "node-local scratch unusable" in run.stderr and "shared filesystem" not in run.stderr
    assert list((tmp_path / "tmp").glob("hpcpilot-*/job-2103-*"))
    assert not (ap / ".hpcpilot" / "scratch").exists()


@pytest.mark.timeout(120)
def test_a_lifetime_inside_its_margin_is_said_at_once(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", {2301: job_definition(2301, "true")})
    run = run_pilot(ap, "grid", "--lifetime", "5")
    assert run.returncode == 81 and "no job will start; give a longer --lifetime" in run.stderr, run.stderr[-2000:]


@pytest.mark.timeout(120)
def test_an_output_is_declared_with_the_guid_the_payload_reported(tmp_path: Path) -> None:
    """A POOL file carries its GUID inside: the GUID declared for it must be that one (jobReport.json's
    files.output[].subFiles[].file_guid), not a new one."""
    guid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    report = {"files": {"output": [{"subFiles": [{"name": "AOD.pool.root", "file_guid": guid},
                                                 {"name": "other", "file_guid": "not-a-guid"}]}]}}
    script = {"make.py": f"import json\nopen('AOD.pool.root', 'w').write('x')\n"
                         f"json.dump({report!r}, open('jobReport.json', 'w'))\n".encode()}
    definition = with_outputs(with_inputs(job_definition(2401, "python3", "make.py"), script), ["AOD.pool.root"])
    run = run_pilot(write_access_point(tmp_path / "ap", {2401: definition}, {2401: script}))
    assert run.returncode == 0, run.stderr[-2000:]
    (output,) = [entry for entry in run.declared(2401) if entry["type"] == "output"]
    assert output["guid"] == guid


@pytest.mark.timeout(120)
def test_the_access_point_can_be_a_setting(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", {2201: job_definition(2201, "true")})
    (tmp_path / "pilot.yaml").write_text(f"access_point: {ap}\n")
    run = subprocess.run([sys.executable, "-m", "hpcpilot", "run", "--config", str(tmp_path / "pilot.yaml")],
                         capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads((ap / "2201" / "worker_attributes.json").read_text())["jobStatus"] == "finished"


@pytest.mark.timeout(60)
def test_log_lines_carry_rank_and_host(catalogue_ap: Path) -> None:
    run = run_pilot(catalogue_ap, "mpi2")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines and all("[0@" in line or "[1@" in line for line in lines if " INFO " in line)
    assert any("progress:" in line for line in lines)


@pytest.mark.timeout(120)
def test_site_plugin_supplies_scratch_and_environment(tmp_path: Path) -> None:
    """--site bnl under mpiexec -n 2: scratch under the node-local $TMPDIR, the site's variables set."""
    script = ('echo "{\\"scratch\\": \\"$HPCPILOT_SCRATCH\\", \\"alrb\\": \\"$ATLAS_LOCAL_ROOT_BASE\\", '
              '\\"proc\\": \\"$ATHENA_PROC_NUMBER\\"}" > jobReport.json')
    definitions = {p: job_definition(p, "bash", f"-c '{script}'", coreCount=2) for p in (1101, 1102)}
    ap = write_access_point(tmp_path / "ap", definitions)
    node_local = tmp_path / "node-local-ssd"
    node_local.mkdir()
    run = run_pilot(ap, "mpi2", "--site", "bnl", "--cores-per-rank", "2",
                    env={"TMPDIR": str(node_local), "HPCPILOT_LIMITS__MIN_FREE_SPACE_MB": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "site bnl" in run.stderr
    for pandaid in definitions:
        report = json.loads((ap / str(pandaid) / "jobReport.json").read_text())
        assert Path(report["scratch"]).is_relative_to(node_local)
        assert report["alrb"] == "/cvmfs/atlas.cern.ch/repo/ATLASLocalRootBase"
        assert report["proc"] == "2"


@pytest.mark.timeout(120)
def test_a_second_run_resumes_without_running_declared_jobs_again(tmp_path: Path) -> None:
    definitions, inputs = {}, {}
    for pandaid in (1201, 1202, 1203):
        definitions[pandaid], inputs[pandaid] = copy_job(pandaid)
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    first = run_pilot(ap)
    assert first.returncode == 0
    # As if the allocation ended: job 1202 was left running with a half-staged declaration.
    (ap / "1202" / "worker_attributes.json").write_text('{"jobStatus": "running"}')
    (ap / "1202" / ".hpcpilot-pending.json").write_text('{"1202": [{"type": "output", "path": "/stale"}]}')
    (ap / "1202" / "event_status.dump.json").rename(ap / "1202" / "event_status.dump.json.read")
    finished_before = (ap / "1201" / "worker_attributes.json").read_bytes()
    second = run_pilot(ap)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (ap / "1201" / "worker_attributes.json").read_bytes() == finished_before
    assert second.attributes(1202)["jobStatus"] == "finished"
    assert "/stale" not in (ap / "1202" / "event_status.dump.json").read_text()
    assert "already declared by an earlier run" in second.stderr
    assert {job["rank"] for job in second.summary()["jobs"] if job["pandaid"] != 1202} == {-1}


@pytest.mark.timeout(120)
def test_a_rerun_leaves_alone_a_job_whose_state_cannot_be_read_and_says_so(tmp_path: Path) -> None:
    """Its state may be final: neither run nor published again; the other jobs run; exit 64 (site problem)."""
    definitions, inputs = {}, {}
    for pandaid in (1211, 1212):
        definitions[pandaid], inputs[pandaid] = copy_job(pandaid)
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    assert run_pilot(ap).returncode == 0
    job_dir = ap / "1211"
    for name in ("worker_attributes.json", "jobReport.json", "event_status.dump.json"):
        (job_dir / name).unlink()
    (job_dir / "worker_attributes.json").mkdir()  # reads fail (EISDIR), as on a failing filesystem
    (job_dir / ".hpcpilot-pending.json").write_text('{"1211": [{"type": "output", "path": "/staged"}]}')
    run = run_pilot(ap)
    assert run.returncode == 64, run.stderr[-2000:]
    assert "job 1211: its" in run.stderr and "not run again" in run.stderr
    assert not (job_dir / "jobReport.json").exists() and not (job_dir / "event_status.dump.json").exists()
    assert run.attributes(1212)["jobStatus"] == "finished"
    assert {job["pandaid"]: job["status"] for job in run.summary()["jobs"]} == {1211: "failed", 1212: "finished"}


def start_pilot(ap: Path, *options: str) -> subprocess.Popen:
    """``hpcpilot run`` in the background (grid mode), payloads declared running at their start."""
    return subprocess.Popen([sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap), *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "HPCPILOT_DECLARE_RUNNING_AFTER": "0"})


def wait_until_declared_running(ap: Path, pandaid: int) -> None:
    attributes = ap / str(pandaid) / "worker_attributes.json"
    deadline = time.monotonic() + 60
    while not (attributes.exists() and '"running"' in attributes.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attributes.exists(), "the first pilot never declared its job running"


@pytest.mark.timeout(120)
def test_a_second_pilot_on_an_access_point_in_use_leaves_every_job_to_the_first(tmp_path: Path) -> None:
    """Two workers started on one access point by mistake: the second touches nothing and exits 64; the
    first runs every job once and declares each output once (not twice, nor rewritten under Harvester)."""
    definitions, inputs = {}, {}
    for pandaid in (1221, 1222):
        definitions[pandaid], inputs[pandaid] = copy_job(pandaid, jobPars=f"-c 'sleep 3; tr a-z A-Z < in.{pandaid} "
                                                         f"> out.{pandaid}'", transformation="bash")
    ap = write_access_point(tmp_path / "ap", definitions, inputs)
    first = start_pilot(ap)
    wait_until_declared_running(ap, 1221)
    second = run_pilot(ap, timeout=60)
    _, first_stderr = communicate_or_kill(first, 90, "the first pilot")
    assert second.returncode == 64, second.stderr[-2000:]
    assert "another pilot is running on this access point" in second.stderr
    assert first.returncode == 0, first_stderr[-2000:]
    for pandaid in (1221, 1222):
        paths = [entry["path"] for entry in second.declared(pandaid)]
        assert sorted(paths) == sorted({*paths}) and len(paths) == 2, paths
    assert {job["rank"] for job in second.summary()["jobs"]} == {0}  # the first run's summary, not rewritten


@pytest.mark.timeout(120)
def test_a_rerun_is_not_refused_while_a_payload_of_the_killed_run_lives_on(tmp_path: Path) -> None:
    """The run lock dies with the pilot: a process its payload left running (escaped from the guard, which
    finds processes by their environment) does not hold it."""
    tag = f"{200 + time.time() % 1:.9f}"
    escape = f"setsid env -i sleep {tag} </dev/null >/dev/null 2>&1 & sleep 60"
    command = f"-c 'if [ -e $HPCPILOT_JOB_DIR/escaped ]; then exit 0; fi; touch $HPCPILOT_JOB_DIR/escaped; {escape}'"
    ap = write_access_point(tmp_path / "ap", {1231: job_definition(1231, "bash", command)})
    first = start_pilot(ap)
    try:
        wait_until_declared_running(ap, 1231)
        deadline = time.monotonic() + 60  # declared at the payload's start, maybe before it forked the escapee
        while not _escaped(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        first.kill()
        first.communicate()
        assert _escaped(tag)
        rerun = run_pilot(ap, timeout=60)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert rerun.attributes(1231)["jobStatus"] == "finished"
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if tag in (process.info["cmdline"] or []):
                process.kill()


@pytest.mark.timeout(120)
def test_the_run_lock_is_held_until_every_rank_has_published_its_last_declarations(tmp_path: Path) -> None:
    """Rank 1 still waits at the end for Harvester to take a dump that is not the pilot's (final_flush_wait),
    its job's declarations unpublished, after rank 0 wrote the summary: a second pilot must still be refused
    then, or both would take back and publish the same job's declarations."""
    ap = write_access_point(tmp_path / "ap", {1241: job_definition(1241, "true"), 1242: job_definition(1242, "true")})
    foreign = ap / "1242" / "event_status.dump.json"
    foreign.write_text('"not a dump of the pilot"')  # rank 1's job (jobs of one size go round-robin)
    command = [*LAUNCHES["mpi2"], sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap)]
    pilot = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, env={**os.environ, "HPCPILOT_FINAL_FLUSH_WAIT": "600"})
    try:
        deadline = time.monotonic() + 60
        while not (ap / "hpcpilot_summary.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (ap / "hpcpilot_summary.json").exists(), "rank 0 never finished"
        assert not _lock_free_within(ap / ".hpcpilot" / "run.lock", 3), "released while rank 1 still publishes"
        foreign.rename(foreign.with_name("event_status.dump.json.read"))  # Harvester takes it at last
        _, stderr = communicate_or_kill(pilot, 60, "the pilot")
    finally:
        pilot.kill()
        pilot.wait()
    assert pilot.returncode == 0, stderr[-3000:]
    assert [entry["type"] for entry in json.loads(foreign.read_text())["1242"]] == ["log"]


def _lock_free_within(lock: Path, seconds: float) -> bool:
    """Whether ``lock`` could be taken (and was let go at once) within ``seconds``."""
    import fcntl

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.05)
        finally:
            os.close(fd)
    return False


def _escaped(tag: str) -> bool:
    return any(tag in (process.info["cmdline"] or []) for process in psutil.process_iter(["cmdline"]))


@pytest.mark.timeout(120)
def test_secrets_never_reach_logs_reports_or_the_log_tarball(tmp_path: Path) -> None:
    secret, token = "s3cr3t-value-42", "tok-9f8e7d6c"
    command = f"-c 'echo using {secret} and {token}; echo {secret} >&2; echo \"{{\\\"t\\\": \\\"{token}\\\"}}\" > jobReport.json; exit 3'"
    definition = job_definition(1301, "bash", command, pilotSecrets=json.dumps({"s3": {"key": secret}}),
                                myToken=token)
    ap = write_access_point(tmp_path / "ap", {1301: definition})
    run = run_pilot(ap, "grid", env={"HPCPILOT_SECRET_KEYS": "myToken"})
    assert run.attributes(1301)["pilotErrorCode"] == 1305
    log_entry = next(e for e in run.declared(1301) if e["type"] == "log")
    members = tarball_members(Path(log_entry["path"]))
    exposed = [run.stderr.encode(), (ap / "1301" / "jobReport.json").read_bytes(), *members.values(),
               (ap / "1301" / "worker_attributes.json").read_bytes()]
    assert not any(secret.encode() in text or token.encode() in text for text in exposed)
    assert b"using *** and ***" in members["payload.stdout"]


@pytest.mark.timeout(120)
def test_rank_zero_keeps_the_heartbeat_while_jobs_run(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", {1401: job_definition(1401, "sleep", "2.5")})
    run = run_pilot(ap, "mpi2", env={"HPCPILOT_HEARTBEAT_INTERVAL": "0.5"})
    assert run.returncode == 0, run.stderr[-2000:]
    beat = json.loads((ap / "worker_heartbeat.json").read_text())
    assert beat["time"] >= (ap / "1401" / "worker_attributes.json").stat().st_mtime - 1.0  # fresh at the end


@pytest.mark.timeout(120)
def test_a_long_payload_is_declared_running_a_short_one_only_final(tmp_path: Path) -> None:
    """declare_running_after: Harvester hears of a payload still running after it; short jobs cost
    no declaration but their final one."""
    ap = write_access_point(tmp_path / "ap", {1501: job_definition(1501, "sleep", "4"),
                                              1502: job_definition(1502, "true")})
    command = [sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap), "--cores-per-rank", "2"]
    env = {**os.environ, "HPCPILOT_DECLARE_RUNNING_AFTER": "1", "HPCPILOT_LIMITS__CHECK_INTERVAL": "0.2"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    seen: dict[int, set[str]] = {1501: set(), 1502: set()}

    def look() -> None:
        for pandaid, states in seen.items():
            try:
                states.add(json.loads((ap / str(pandaid) / "worker_attributes.json").read_text())["jobStatus"])
            except FileNotFoundError:
                pass

    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        look()
        time.sleep(0.05)
    _, stderr = communicate_or_kill(process, 60, "the pilot")
    look()  # the final states, written just before the pilot ended
    assert process.returncode == 0, stderr[-2000:]
    assert seen[1501] == {"running", "finished"}
    assert seen[1502] == {"finished"}


@pytest.mark.timeout(120)
def test_job_steps_go_to_the_jobs_own_log_and_one_line_per_job_to_the_pilots(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", {1601: job_definition(1601, "echo", "hello")})
    run = run_pilot(ap)
    assert run.returncode == 0, run.stderr[-2000:]
    job_lines = [line for line in run.stderr.splitlines() if "job 1601:" in line]
    assert len(job_lines) == 1 and "finished (code 0)" in job_lines[0]
    pilot_log = tarball_members(ap / "1601" / "log.1601.job.log.tgz")["pilot.log"].decode()
    for step in ("scratch", "payload: echo hello", "payload ended with 0", "finished (code 0)"):
        assert step in pilot_log, pilot_log
    assert all("[0@" in line for line in pilot_log.splitlines())


@pytest.mark.timeout(120)
def test_a_payloads_own_large_pilot_log_is_replaced_not_reported_as_cut(tmp_path: Path) -> None:
    """The log tarball packs the pilot's job log from memory in place of any pilot.log the payload wrote: one
    over max_stdout_mb is neither looked at nor said to be cut to its two ends."""
    ap = write_access_point(tmp_path / "ap", {1603: job_definition(1603, "head", "-c 2000000 /dev/zero > pilot.log")})
    run = run_pilot(ap, env={"HPCPILOT_LIMITS__MAX_STDOUT_MB": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.attributes(1603)["jobStatus"] == "finished"
    assert "payload ended with 0" in tarball_members(ap / "1603" / "log.1603.job.log.tgz")["pilot.log"].decode()
    assert "pilot.log is" not in run.stderr


@pytest.mark.timeout(120)
def test_a_kept_scratch_holds_the_jobs_log_and_final_report(tmp_path: Path) -> None:
    ap = write_access_point(tmp_path / "ap", {1602: job_definition(1602, "echo", "hello")})
    run = run_pilot(ap, "grid", "--scratch", str(tmp_path / "scratch"), "--keep-scratch")
    assert run.returncode == 0, run.stderr[-2000:]
    (kept,) = (tmp_path / "scratch").glob("*/job-1602-*")
    members = tarball_members(ap / "1602" / "log.1602.job.log.tgz")
    assert (kept / "pilot.log").read_bytes() == members["pilot.log"]
    assert "payload ended with 0" in (kept / "pilot.log").read_text()
    assert json.loads((kept / "jobReport.json").read_text()) == json.loads((ap / "1602" / "jobReport.json").read_text())


@pytest.mark.timeout(120)
def test_each_rank_validates_its_share_and_declares_its_invalid_jobs(tmp_path: Path) -> None:
    definitions = {pandaid: job_definition(pandaid, "true") for pandaid in range(1701, 1707)}
    for pandaid in (1701, 1702):  # dealt round-robin: one to each rank
        definitions[pandaid]["transformation"] = "NULL"
    ap = write_access_point(tmp_path / "ap", definitions)
    run = run_pilot(ap, "mpi2")
    assert run.returncode == 0, run.stderr[-2000:]
    summary = run.summary()
    assert (summary["finished"], summary["failed"]) == (4, 2)
    invalid = {job["pandaid"]: job for job in summary["jobs"] if job["status"] == "failed"}
    assert set(invalid) == {1701, 1702} and {job["rank"] for job in invalid.values()} == {0, 1}
    for pandaid in invalid:
        attributes = run.attributes(pandaid)
        assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1110), attributes
        assert "transformation" in attributes["pilotErrorDiag"]


@pytest.mark.timeout(300)
def test_the_heartbeat_is_kept_while_unreadable_definitions_are_declared(tmp_path: Path) -> None:
    """Declaring tens of thousands of unreadable jobs takes minutes: Harvester must not meanwhile take the
    worker for dead (they were all declared before the first heartbeat)."""
    jobs = 1500
    ap = write_access_point(tmp_path / "ap", {pandaid: job_definition(pandaid, "true")
                                              for pandaid in range(20001, 20001 + jobs)})
    for pandaid in range(20001, 20001 + jobs):
        (ap / str(pandaid) / "HPCJobs.json").write_text("{not json")
    command = [*LAUNCHES["mpi2"], sys.executable, "-m", "hpcpilot", "run", "--access-point", str(ap)]
    with open(tmp_path / "stderr", "w+") as stderr:  # a file, not a pipe: nobody reads it while polling
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        heartbeat = ap / HarvesterFiles().heartbeat
        while not heartbeat.exists() and process.poll() is None:
            time.sleep(0.005)
        declared_by_then = len(list(ap.glob("*/worker_attributes.json")))
        communicate_or_kill(process, 240, "hpcpilot")
    assert len(list(ap.glob("*/worker_attributes.json"))) == jobs, (tmp_path / "stderr").read_text()[-2000:]
    assert declared_by_then < jobs / 2, f"the first heartbeat came after {declared_by_then} of {jobs} declarations"


@pytest.mark.timeout(120)
def test_a_job_whose_event_service_flag_is_unreadable_fails_and_the_others_run(tmp_path: Path) -> None:
    definitions = {pandaid: job_definition(pandaid, "true") for pandaid in (1711, 1712)}
    definitions[1711]["eventService"] = "maybe"
    run = run_pilot(write_access_point(tmp_path / "ap", definitions), "mpi2")
    assert run.returncode == 0, run.stderr[-2000:]
    attributes = run.attributes(1711)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", 1008), attributes
    assert "eventService" in attributes["pilotErrorDiag"] and "maybe" in attributes["pilotErrorDiag"]
    assert run.attributes(1712)["jobStatus"] == "finished"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("variable, value", [("SLURM_JOB_END_TIME", "nan"), ("SLURM_JOB_END_TIME", "1e400"),
                                             ("COBALT_ENDTIME", "inf"), ("SLURM_JOB_END_TIME", "99999999999999999999")])
def test_a_batch_end_time_that_is_no_time_is_passed_over_with_a_warning(tmp_path: Path, variable: str, value: str) -> None:
    """It made an internal error (exit 70) of the whole run: the end time was logged as a date it cannot be."""
    definition, data = copy_job(305)
    ap = write_access_point(tmp_path / "ap", {305: definition}, {305: data})
    run = run_pilot(ap, "grid", env={variable: value})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.attributes(305)["jobStatus"] == "finished"
    assert "could not read the batch job's end time" in run.stderr and "is no date" in run.stderr


@pytest.mark.timeout(120)
def test_the_batch_jobs_id_is_declared_as_batch_id(tmp_path: Path) -> None:
    """PanDA shows the batch job a job ran in (batchID, one of the attributes Harvester forwards)."""
    definition, data = copy_job(303)
    invalid = {**job_definition(304, "true"), "coreCount": "eight"}  # declared failed before it runs: the same ID
    ap = write_access_point(tmp_path / "ap", {303: definition, 304: invalid}, {303: data})
    run = run_pilot(ap, "grid", env={"SLURM_JOB_ID": "4242", "SLURM_JOB_END_TIME": str(int(time.time()) + 3600)})
    attributes = run.attributes(303)
    assert attributes["jobStatus"] == "finished" and attributes["batchID"] == "4242", attributes
    assert_types_the_panda_server_accepts(attributes)
    assert (run.attributes(304)["jobStatus"], run.attributes(304)["batchID"]) == ("failed", "4242")


@pytest.mark.timeout(120)
def test_the_scratch_a_killed_pilot_left_on_the_node_is_removed_by_the_next_pilot(tmp_path: Path) -> None:
    """A pilot SIGKILLed (the OOM killer, the batch system at the walltime) leaves its scratch on a node-local
    disk that may outlive the batch job; the next pilot using that scratch removes it, and its own at its end."""
    scratch = tmp_path / "scratch"
    first = write_access_point(tmp_path / "ap1", {1231: job_definition(1231, "sleep", "300")})
    pilot = start_pilot(first, "--scratch", str(scratch))
    wait_until_declared_running(first, 1231)
    pilot.kill()
    communicate_or_kill(pilot, 30, "the killed pilot")
    [left] = scratch.iterdir()
    assert list(left.glob("job-1231-*"))
    second = write_access_point(tmp_path / "ap2", {1232: job_definition(1232, "true")})
    run = run_pilot(second, "grid", "--scratch", str(scratch))
    assert run.returncode == 0 and run.attributes(1232)["jobStatus"] == "finished", run.stderr[-2000:]
    assert "removed the scratch of 1 pilot(s)" in run.stderr
    assert list(scratch.iterdir()) == []
