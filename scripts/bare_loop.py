#!/usr/bin/env python3
"""The least a Python pilot can do per job under PROTOCOL.md: a reference for bench.py, not a pilot.

    python scripts/bare_loop.py ACCESS_POINT SCRATCH PROCESSES

Runs the jobs of ``worker_pandaids.json`` in PROCESSES forked processes (as many as the pilot's ranks),
each taking every PROCESSES-th job, one job at a time. For each job:
reads its definition, makes a scratch directory, runs the definition's ``transformation`` through bash
(as the pilot does), copies its first declared output back with its adler32, writes a gzip tar of the
payload's stdout as the log tarball, and publishes ``event_status.dump.json``, ``jobReport.json`` and
``worker_attributes.json`` whole (temp file, fdatasync, rename). Every file it leaves on the access point
is made durable before it is declared, as the pilot's are.

Nothing else: no monitoring, no limits, no MPI, no log of its own, no error handling (any error ends it).
Its CPU per job is what the protocol's files and the payload's launch cost on this machine's filesystems,
before any pilot code; bench.py compares the pilot with it.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
import time
import traceback
import zlib

BASH = shutil.which("bash") or "/bin/bash"


def durable(path: str, data: bytes, publish: bool = True) -> None:
    """Write ``data`` to ``path`` and flush it; ``publish``: under a temp name, then renamed (a reader never
    sees it half-written)."""
    target = path + ".tmp" if publish else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if publish:
        os.rename(target, path)


def run_payload(line: str, workdir: str) -> int:
    stdout = os.open(os.path.join(workdir, "payload.stdout"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.chdir(workdir)
        child = os.posix_spawn(BASH, [BASH, "-c", line], os.environ,
                               file_actions=[(os.POSIX_SPAWN_DUP2, stdout, 1)])
    finally:
        os.close(stdout)
        os.chdir("/")
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


def log_tarball(workdir: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(os.path.join(workdir, "payload.stdout"), arcname="payload.stdout")
    return buffer.getvalue()


def entry(kind: str, path: str, data: bytes) -> dict:
    return {"type": kind, "path": path, "fsize": len(data), "chksum": f"{zlib.adler32(data):08x}"}


def run_job(access_point: str, scratch: str, pandaid: int) -> None:
    jobdir = os.path.join(access_point, str(pandaid))
    with open(os.path.join(jobdir, "HPCJobs.json"), "rb") as definitions:
        job = json.loads(definitions.read())[str(pandaid)]
    workdir = os.path.join(scratch, str(pandaid))
    os.mkdir(workdir)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    exit_code = run_payload(job["transformation"], workdir)
    output = job["outFiles"].split(",")[0]
    with open(os.path.join(workdir, output), "rb") as produced:
        data = produced.read()
    durable(os.path.join(jobdir, output), data, publish=False)
    tarball = log_tarball(workdir)
    durable(os.path.join(jobdir, job["logFile"]), tarball, publish=False)
    entries = [entry("output", os.path.join(jobdir, output), data),
               entry("log", os.path.join(jobdir, job["logFile"]), tarball)]
    durable(os.path.join(jobdir, "event_status.dump.json"), json.dumps({str(pandaid): entries}).encode())
    durable(os.path.join(jobdir, "jobReport.json"), json.dumps({"exitCode": exit_code}).encode())
    attributes = {"jobStatus": "finished" if exit_code == 0 else "failed", "transExitCode": exit_code,
                  "startTime": started, "endTime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    durable(os.path.join(jobdir, "worker_attributes.json"), json.dumps(attributes).encode())
    shutil.rmtree(workdir)


def run_share(access_point: str, scratch: str, index: int, processes: int) -> None:
    with open(os.path.join(access_point, "worker_pandaids.json"), "rb") as listing:
        pandaids = json.loads(listing.read())[index::processes]
    for pandaid in pandaids:
        run_job(access_point, scratch, pandaid)


def in_child(work, *args) -> int:
    """Fork; the child runs ``work(*args)`` and exits 0, or 1 with its traceback."""
    pid = os.fork()
    if pid == 0:
        try:
            work(*args)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    return pid


def main(access_point: str, scratch: str, processes: int) -> int:
    children = [in_child(run_share, access_point, scratch, index, processes) for index in range(processes)]
    failed = [pid for pid in children if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[1])
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
