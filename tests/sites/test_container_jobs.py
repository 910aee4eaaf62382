"""Jobs whose container cannot run, through the real pilot and real podman: each fails with 1110 (payload setup
failed), a diagnostic that says why and what to check, and no scratch left; a job beside them runs.

The site is nersc, whose runtime podman-hpc takes podman's arguments: here a two-line podman-hpc that
calls podman.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from hpcpilot.errors import ErrorCode

from ..e2e.conftest import run_pilot
from ..faults.conftest import assert_failed_with

BYSTANDER = 9001


@pytest.fixture
def podman_hpc(tmp_path: Path, podman_environment: dict[str, str]) -> dict[str, str]:
    """The environment of a pilot whose PATH has a podman-hpc that is podman."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "podman-hpc"
    shim.write_text('#!/bin/sh\nexec podman "$@"\n')
    shim.chmod(0o755)
    return {**podman_environment, "PATH": f"{bin_dir}:{podman_environment['PATH']}"}


def _not_an_image(tmp_path: Path) -> dict[int, tuple[str, tuple[str, ...]]]:
    """PandaID -> (container_name, words of its diagnostic), one kind of broken image path each."""
    fifo = tmp_path / "image.fifo"
    os.mkfifo(fifo)
    plain_file = tmp_path / "image.sif"
    plain_file.write_bytes(b"not a root filesystem")
    without_shell = tmp_path / "rootfs-without-bash"  # an unpacked image that lacks the site's shell
    without_shell.mkdir()
    return {
        101: (str(fifo), ("is not a directory", "a FIFO", "container_name")),
        102: (str(plain_file), ("is not a directory", "a file", "container_name")),
        103: (str(tmp_path / "missing-image"), ("No such file or directory", "container_name", "mounted")),
        104: (str(without_shell), ("exit 127", "/bin/bash", "OCI runtime", "container_name")),
    }


@pytest.mark.timeout(300)
def test_a_container_that_cannot_start_fails_its_job_with_1110_saying_why(tmp_path: Path, podman_hpc) -> None:
    """A FIFO, a file, a missing path, a root filesystem without the shell: 1110 each (without the checks,
    podman's 126 and 127 were the payload's 1305, 'command not executable' / 'not found')."""
    broken = _not_an_image(tmp_path)
    definitions = {pandaid: job_definition(pandaid, "true", container_name=image)
                   for pandaid, (image, _) in broken.items()}
    definitions[BYSTANDER] = job_definition(BYSTANDER, "true")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    run = run_pilot(write_access_point(tmp_path / "ap", definitions), "grid", "--site", "nersc",
                    "--scratch", str(scratch), "--cores-per-rank", "2", env=podman_hpc, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    for pandaid, (_, words) in broken.items():
        assert_failed_with(run, pandaid, ErrorCode.SETUP_FAILED, *words)
    assert run.attributes(BYSTANDER)["jobStatus"] == "finished"
    assert list(scratch.rglob("job-*")) == []


@pytest.mark.timeout(120)
def test_a_runtimes_error_in_colour_reaches_the_log_without_its_escapes(tmp_path: Path) -> None:
    """A runtime that fails (125, podman's own code) saying so in colour, a NUL in it: its line was written
    raw into the rank's log, escape sequences and all, for a terminal or log viewer to act on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runtime = bin_dir / "podman-hpc"
    runtime.write_text("#!/bin/sh\nprintf 'Error: \\033[31mimage not known\\033[0m\\000\\n' >&2\nexit 125\n")
    runtime.chmod(0o755)
    definitions = {101: job_definition(101, "true", container_name="localhost/missing:1")}
    run = run_pilot(write_access_point(tmp_path / "ap", definitions), "grid", "--site", "nersc",
                    env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=90)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_failed_with(run, 101, ErrorCode.SETUP_FAILED, "image not known")
    assert "image not known" in run.stderr
    assert "\x1b" not in run.stderr and "\x00" not in run.stderr
