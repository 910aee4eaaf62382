"""Running the real ``hpcpilot`` command on access points laid out as Harvester lays them."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

RUN_TIMEOUT = 180
LAUNCHES = {
    "grid": [],
    "mpi1": ["mpiexec", "-n", "1"],
    "mpi2": ["mpiexec", "-n", "2"],
    "mpi4": ["mpiexec", "-n", "4"],
}


@dataclass
class PilotRun:
    returncode: int
    stdout: str
    stderr: str
    access_point: Path

    def attributes(self, pandaid: int) -> dict:
        return json.loads((self.job_dir(pandaid) / "worker_attributes.json").read_text())

    def declared(self, pandaid: int) -> list[dict]:
        content = json.loads((self.job_dir(pandaid) / "event_status.dump.json").read_text())
        assert list(content) == [str(pandaid)]
        return content[str(pandaid)]

    def job_dir(self, pandaid: int) -> Path:
        job_dir = self.access_point / str(pandaid)  # ManyToOne; OneToOne has the job's files at the top
        return job_dir if job_dir.is_dir() else self.access_point

    def summary(self) -> dict:
        return json.loads((self.access_point / "hpcpilot_summary.json").read_text())


def run_pilot(access_point: Path, launch: str = "grid", *options: str, env: dict | None = None,
              timeout: float = RUN_TIMEOUT, prefix: tuple[str, ...] = ()) -> PilotRun:
    """Run ``hpcpilot run`` for real (``prefix``, e.g. setpriv, in front); killed whole if it overruns."""
    command = [*prefix, *LAUNCHES[launch], sys.executable, "-m", "hpcpilot", "run",
               "--access-point", str(access_point), "--progress-interval", "1", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})}, start_new_session=True)
    stdout, stderr = communicate_or_kill(process, timeout, f"hpcpilot under {launch}")
    return PilotRun(process.returncode, stdout, stderr, access_point)


def communicate_or_kill(process: subprocess.Popen, timeout: float, what: str) -> tuple[str, str]:
    """The process's output; if it overruns, its whole session is killed and the test fails."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"{what} overran {timeout} s:\n{(stderr or '')[-4000:]}")


def adler32_of(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def assert_declared_file_matches(entry: dict) -> bytes:
    """The declared path exists and its bytes match the declared size and checksum."""
    data = Path(entry["path"]).read_bytes()
    assert Path(entry["path"]).is_absolute()
    assert entry["fsize"] == len(data)
    assert entry["chksum"] == adler32_of(data)
    assert entry["guid"]
    return data


def tarball_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {member.name.split("/", 1)[1]: tar.extractfile(member).read()
                for member in tar.getmembers() if member.isfile()}


def start_on_a_terminal(command: list[str], **popen) -> tuple[subprocess.Popen, int]:
    """``command`` as started from an interactive allocation (salloc, ssh): the leader of a session whose
    controlling terminal is a pty, its standard streams on it (those ``popen`` gives elsewhere aside); returns
    the process and the pty's master side, whose closing hangs the terminal up (as the ssh connection's end
    does: the kernel sends SIGHUP to the session's leader)."""
    master, terminal = os.openpty()
    streams = {"stdin": terminal, "stdout": terminal, "stderr": terminal}
    process = subprocess.Popen(["setsid", "--ctty", *command], **{**streams, **popen})
    os.close(terminal)
    return process, master


def read_terminal_until(master: int, done: Callable[[], bool], process: subprocess.Popen, timeout: float = 60) -> None:
    """Read what ``process`` writes on its terminal (a full one would block it) until ``done()``, or it ended."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and process.poll() is None:
        if select.select([master], [], [], 0.2)[0]:
            try:
                os.read(master, 65536)
            except OSError:  # EIO: nothing holds the terminal open (nohup sent the output elsewhere)
                time.sleep(0.2)
