"""Wrapping a payload in the job's container with the site's runtime.

The argv of every runtime is pinned; the runtime search runs over a real
PATH directory; and, where podman works on this machine (Debian's podman +
runc, as root), one payload really runs in a container built here from a
few host binaries, with the scratch directory bound as working directory.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from hpcpilot.container import RUNTIMES, container_command, find_runtime, runtime_failure, runtime_of, wrap_command
from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.sites import Site, SiteData, load_site

SCRATCH = Path("/tmp/scratch/job-4711")
COMMAND = "Sim_tf.py --inputEVNTFile EVNT.pool.root.1"


def _site(*runtimes: str, options: dict | None = None) -> Site:
    return Site(SiteData(name="containertest", container_runtimes=runtimes,
                         container_options={key: tuple(value) for key, value in (options or {}).items()}))


@pytest.mark.parametrize("runtime", ["apptainer", "singularity"])
def test_apptainer_and_singularity_exec_with_scratch_bound_and_as_working_dir(runtime):
    argv = container_command(runtime, f"/usr/bin/{runtime}", "atlas/athena:21.0.15", COMMAND, SCRATCH)
    assert argv == [f"/usr/bin/{runtime}", "exec", "--bind", f"{SCRATCH}:{SCRATCH}", "--pwd", str(SCRATCH),
                    "docker://atlas/athena:21.0.15", "/bin/bash", "-c", COMMAND]


def test_apptainer_keeps_paths_and_transports_as_given():
    unpacked = "/cvmfs/unpacked.cern.ch/registry.hub.docker.com/atlas/athena:21.0.15"
    assert unpacked in container_command("apptainer", "apptainer", unpacked, "true", SCRATCH)
    assert "oras://reg/img:1" in container_command("apptainer", "apptainer", "oras://reg/img:1", "true", SCRATCH)


def test_shifter_uses_image_volume_and_workdir():
    argv = container_command("shifter", "shifter", "docker://atlas/athena:21.0.15", COMMAND, SCRATCH)
    assert argv == ["shifter", "--image=docker:atlas/athena:21.0.15", f"--volume={SCRATCH}:{SCRATCH}",
                    f"--workdir={SCRATCH}", "--", "/bin/bash", "-c", COMMAND]


def test_shifter_refuses_an_image_path_with_a_setup_error():
    with pytest.raises(PilotError) as error:
        container_command("shifter", "shifter", "/cvmfs/unpacked.cern.ch/x", "true", SCRATCH)
    assert error.value.code == ErrorCode.SETUP_FAILED


@pytest.mark.parametrize("runtime", ["podman-hpc", "podman"])
def test_podman_runs_with_volume_workdir_and_the_payload_environment(runtime):
    argv = container_command(runtime, runtime, "docker://atlas/athena:21.0.15", COMMAND, SCRATCH,
                             options=["--gpu"], env_names=["OMP_NUM_THREADS", "ATHENA_CORE_NUMBER"])
    assert argv == [runtime, "run", "--rm", "--volume", f"{SCRATCH}:{SCRATCH}", "--workdir", str(SCRATCH),
                    "--env", "ATHENA_CORE_NUMBER", "--env", "OMP_NUM_THREADS", "--gpu",
                    "atlas/athena:21.0.15", "/bin/bash", "-c", COMMAND]


def test_podman_runs_an_unpacked_directory_as_root_filesystem():
    argv = container_command("podman", "podman", "/cvmfs/unpacked.cern.ch/img", "true", SCRATCH)
    assert argv[-5:] == ["--rootfs", "/cvmfs/unpacked.cern.ch/img", "/bin/bash", "-c", "true"]


CHANNEL_DIR = Path("/tmp/hpcpilot-77-abc")  # an event channel's socket directory, outside the scratch


@pytest.mark.parametrize("runtime, bound", [
    ("apptainer", ["--bind", f"{SCRATCH}:{SCRATCH}", "--bind", f"{CHANNEL_DIR}:{CHANNEL_DIR}", "--pwd"]),
    ("singularity", ["--bind", f"{SCRATCH}:{SCRATCH}", "--bind", f"{CHANNEL_DIR}:{CHANNEL_DIR}", "--pwd"]),
    ("shifter", [f"--volume={SCRATCH}:{SCRATCH}", f"--volume={CHANNEL_DIR}:{CHANNEL_DIR}", f"--workdir={SCRATCH}"]),
    ("podman", ["--volume", f"{SCRATCH}:{SCRATCH}", "--volume", f"{CHANNEL_DIR}:{CHANNEL_DIR}", "--workdir"]),
    ("podman-hpc", ["--volume", f"{SCRATCH}:{SCRATCH}", "--volume", f"{CHANNEL_DIR}:{CHANNEL_DIR}", "--workdir"]),
])
def test_a_directory_outside_the_scratch_is_bound_at_its_own_path_too(runtime, bound):
    """An event service payload's channel socket outside its scratch (whose path was too long for a socket):
    podman and shifter bound only the scratch, so the payload could not reach the channel."""
    argv = container_command(runtime, runtime, "docker://atlas/athena:21.0.15", COMMAND, SCRATCH, binds=[CHANNEL_DIR])
    start = argv.index(bound[0])
    assert argv[start:start + len(bound)] == bound
    assert argv[-3:] == ["/bin/bash", "-c", COMMAND]


@pytest.mark.parametrize("scratch, binds", [
    (Path("/var/tmp/scratch/job-4711"), []),  # the scratch where the site's temp directory is /var/tmp
    (SCRATCH, [Path("/var/tmp/hpcpilot-77-abc")]),  # an event channel's directory there
    (SCRATCH, [Path("/etc/hpcpilot")]),
    (SCRATCH, [Path("/opt")]),
])
def test_shifter_is_not_asked_for_a_volume_where_it_refuses_one(scratch, binds):
    """Shifter refuses a volume under /etc, /var or /opt/udiImage, or at /opt: the job failed as the payload's
    own exit, every range of an event service job as lost, with no word of why. It is a setup failure now."""
    with pytest.raises(PilotError) as raised:
        container_command("shifter", "shifter", "docker:atlas/athena:21.0.15", COMMAND, scratch, binds=binds)
    assert raised.value.code == ErrorCode.SETUP_FAILED
    assert str([*binds, scratch][0]) in raised.value.diag and "shifter" in raised.value.diag


def test_shifter_is_not_asked_for_a_volume_through_a_symlink_into_var(tmp_path: Path):
    """Shifter resolves the target: a temp directory linked to /var/tmp is refused as /var/tmp is."""
    (tmp_path / "tmp").symlink_to("/var/tmp")
    with pytest.raises(PilotError) as raised:
        container_command("shifter", "shifter", "busybox", "true", SCRATCH, binds=[tmp_path / "tmp" / "hpcpilot-1"])
    assert raised.value.code == ErrorCode.SETUP_FAILED


def test_shifter_binds_a_directory_whose_name_only_looks_like_a_refused_one():
    argv = container_command("shifter", "shifter", "busybox", "true", SCRATCH, binds=[Path("/optional/x")])
    assert "--volume=/optional/x:/optional/x" in argv


def test_every_known_runtime_builds_a_command():
    for runtime in RUNTIMES:
        assert container_command(runtime, runtime, "busybox", "true", SCRATCH)[-3:] == ["/bin/bash", "-c", "true"]


def _executable(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_first_installed_runtime_of_the_site_is_used(tmp_path):
    singularity = _executable(tmp_path, "singularity")
    site = _site("apptainer", "singularity", options={"singularity": ["--contain"]})
    assert find_runtime(site, str(tmp_path)) == ("singularity", str(singularity))
    argv = wrap_command(site, "atlas/athena:21.0.15", "true", SCRATCH, search_path=str(tmp_path))
    assert argv[:2] == [str(singularity), "exec"] and "--contain" in argv


def test_nersc_prefers_podman_hpc_over_shifter(tmp_path):
    _executable(tmp_path, "shifter")
    podman_hpc = _executable(tmp_path, "podman-hpc")
    assert find_runtime(load_site("nersc"), str(tmp_path)) == ("podman-hpc", str(podman_hpc))


def test_no_runtime_installed_is_a_setup_error_naming_site_and_runtimes(tmp_path):
    with pytest.raises(PilotError) as error:
        wrap_command(load_site("bnl"), "atlas/athena:21.0.15", "true", SCRATCH, search_path=str(tmp_path))
    assert error.value.code == ErrorCode.SETUP_FAILED
    assert "site bnl" in error.value.diag and "apptainer, singularity" in error.value.diag


def test_site_without_runtimes_says_so():
    with pytest.raises(PilotError, match="offers no container runtime"):
        wrap_command(_site(), "atlas/athena:21.0.15", "true", SCRATCH, search_path="")


# -- one real container run ---------------------------------------------------

HOST_PROGRAMS = ("/bin/bash", "/bin/sh", "/bin/cat", "/bin/pwd", "/usr/bin/env")


def _copy_with_libraries(program: str, root: Path) -> None:
    ldd = subprocess.run(["ldd", program], capture_output=True, text=True, timeout=30)
    libraries = [word for word in ldd.stdout.split() if word.startswith("/")]
    for path in [program, *libraries]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)


@pytest.fixture
def podman_image(tmp_path, podman_environment):
    """(image name, environment for podman): a tiny image made from host binaries."""
    root = tmp_path / "rootfs"
    for program in HOST_PROGRAMS:
        _copy_with_libraries(program, root)
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    imported = subprocess.run(["podman", "import", str(archive), "localhost/hpcpilot-test:1"],
                              capture_output=True, text=True, env=podman_environment, timeout=120)
    if imported.returncode != 0:
        pytest.skip(f"podman cannot import images here: {imported.stderr.strip()}")
    return "localhost/hpcpilot-test:1", podman_environment


@pytest.mark.timeout(180)
def test_payload_really_runs_in_a_podman_container_in_its_scratch_dir(tmp_path, podman_image):
    image, environment = podman_image
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "input.txt").write_text("event data\n")
    site = _site("podman")
    command = 'cat input.txt > output.txt; pwd >> output.txt; echo "cores=$OMP_NUM_THREADS" >> output.txt'
    argv = wrap_command(site, image, command, scratch, env_names=["OMP_NUM_THREADS"])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                            env={**environment, "OMP_NUM_THREADS": "4"})
    assert result.returncode == 0, result.stderr
    assert (scratch / "output.txt").read_text() == f"event data\n{scratch}\ncores=4\n"


@pytest.mark.timeout(180)
def test_payload_exit_code_comes_back_through_podman(tmp_path, podman_image):
    image, environment = podman_image
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = wrap_command(_site("podman"), image, "exit 65", scratch)
    assert subprocess.run(argv, capture_output=True, env=environment, timeout=120).returncode == 65


@pytest.mark.timeout(180)
def test_a_failure_of_podman_itself_is_a_setup_error_not_the_payloads(tmp_path, podman_image):
    """An image podman cannot find: it exits 125, its own code (1110); the payload's exit codes are the
    payload's. (A payload that exits 125 itself would be taken for podman: podman cannot tell them apart.)"""
    image, environment = podman_image
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name, command, expected in [("localhost/hpcpilot-missing:1", "true", 125), (image, "exit 65", 65)]:
        argv = wrap_command(_site("podman"), name, command, scratch)
        returncode = subprocess.run(argv, capture_output=True, env=environment, timeout=120).returncode
        assert returncode == expected
        error = runtime_failure(runtime_of(argv), returncode)
        assert (error.code if error else None) == (ErrorCode.SETUP_FAILED if expected == 125 else None)


def test_podmans_126_and_127_are_its_own_only_when_its_oci_runtime_says_so():
    """podman exits 126/127 when the site's shell cannot be run in the container, and says so; bash exits
    so for the payload's own commands, and that is the payload's exit."""
    podman_said = 'Error: runc create failed: exec: "/bin/bash": stat /bin/bash: no such file or directory: ' \
                  "OCI runtime attempted to invoke a command that was not found\n"
    failure = runtime_failure("podman", 127, "pulling...\n" + podman_said)
    assert failure.code == ErrorCode.SETUP_FAILED
    assert "exit 127" in failure.diag and "OCI runtime attempted" in failure.diag
    assert runtime_failure("podman", 127, "bash: line 1: Sim_tf.py: command not found\n") is None
    assert runtime_failure("apptainer", 127, podman_said) is None  # not podman's words for apptainer


def test_a_runtime_failure_quotes_the_runtimes_last_line_within_bounds():
    message = "Error: initializing source docker://atlas/missing:1: " + "x" * 1000
    diag = runtime_failure("podman-hpc", 125, f"Trying to pull...\n{message}\n").diag
    assert "Error: initializing source" not in diag and "x" * 200 in diag  # the end of a long line
    assert len(diag) < 500 and "container_name" in diag  # PanDA keeps 500 characters
    assert "exit 125" in runtime_failure("podman", 125, "").diag
