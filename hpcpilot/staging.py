"""Stage-in to node-local scratch and stage-out back to the job directory, checksummed in passing.

Stage-in modes: ``copy`` (bytes copied, size and checksum verified in the
same read), ``link`` (a symlink to the replica, whose checksum is verified
by reading it once) and ``direct`` (the payload reads the replica in place
through a symlink; only its size is verified, as reading it would defeat
remote I/O). Stage-out publishes each file atomically with its size and
adler32, and never follows a symlink out of scratch.
"""
from __future__ import annotations

import errno
import logging
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any, Iterable

from .atomicfile import atomic_writer
from .checksums import ChecksummingWriter, RunningChecksum, copy_with_checksum, file_checksum, matches
from .errors import ErrorCode, PilotError
from .jobs import FileSpec, JobSpec

log = logging.getLogger(__name__)

_MISMATCH_CODES = {"adler32": ErrorCode.ADLER32_MISMATCH_INPUT, "md5": ErrorCode.MD5_MISMATCH_INPUT}
POOL_FILE_CATALOG = "PoolFileCatalog.xml"


def stagein_mode(job: JobSpec, configured: str) -> str:
    return "direct" if job.transfer_type == "direct" else configured


def stage_in(job: JobSpec, job_dir: Path, scratch: Path, mode: str) -> int:
    """Bring every input of ``job`` into ``scratch``; returns the bytes verified."""
    total = 0
    for spec in job.inputs:
        source = _replica(spec, job_dir)
        total += _stage_file(spec, source, scratch / spec.lfn, mode)
    _write_pool_file_catalog(job, scratch)
    return total


def _replica(spec: FileSpec, job_dir: Path) -> Path:
    """Where Harvester put the input: ``inFilePaths``, else the LFN entry in the job directory."""
    source = Path(spec.source_path) if spec.source_path else Path(spec.lfn)
    source = source if source.is_absolute() else job_dir / source
    if not source.exists():
        raise PilotError(ErrorCode.STAGEIN_FAILED, f"input {spec.lfn} not found at {source}")
    return source


def _stage_file(spec: FileSpec, source: Path, target: Path, mode: str) -> int:
    want_md5 = spec.checksum is not None and spec.checksum.kind == "md5"
    try:
        if mode == "copy":
            with open(target, "xb") as handle:
                running = copy_with_checksum(source, handle, want_md5)
        else:
            target.symlink_to(source.resolve())
            running = None if mode == "direct" else file_checksum(source, want_md5)
    except OSError as error:
        raise _stagein_error(spec, source, error) from None
    size = running.size if running else source.stat().st_size
    _verify_input(spec, size, running)
    return size


def _stagein_error(spec: FileSpec, source: Path, error: OSError) -> PilotError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return PilotError(ErrorCode.NO_LOCAL_SPACE, f"no space left in scratch for input {spec.lfn}: {error}")
    return PilotError(ErrorCode.STAGEIN_FAILED, f"cannot stage in {spec.lfn} from {source}: {error.strerror}")


def _verify_input(spec: FileSpec, size: int, running: RunningChecksum | None) -> None:
    if spec.fsize is not None and size != spec.fsize:
        raise PilotError(ErrorCode.STAGEIN_FAILED, f"input {spec.lfn}: size {size} differs from declared {spec.fsize}")
    if running is not None and not matches(running, spec.checksum):
        kind = spec.checksum.kind
        raise PilotError(_MISMATCH_CODES[kind],
                         f"input {spec.lfn}: {kind} {running.value(kind)} differs from declared {spec.checksum.value}")


def _write_pool_file_catalog(job: JobSpec, scratch: Path) -> None:
    """The GUID -> local file catalogue that ATLAS payloads read from their working directory."""
    entries = "".join(
        f'  <File ID="{spec.guid}">\n    <physical><pfn filetype="ROOT_All" name="{spec.lfn}"/></physical>\n'
        f'    <logical><lfn name="{spec.lfn}"/></logical>\n  </File>\n'
        for spec in job.inputs
    )
    (scratch / POOL_FILE_CATALOG).write_text(
        f'<?xml version="1.0" encoding="UTF-8" standalone="no" ?>\n<POOLFILECATALOG>\n{entries}</POOLFILECATALOG>\n'
    )


def inside_scratch(scratch: Path, name: str) -> Path:
    """The real path of ``scratch/name``, refusing a symlink that leads out of scratch."""
    path = scratch / name
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(Path(os.path.realpath(scratch))):
        raise PilotError(ErrorCode.FILE_HANDLING, f"{name} in scratch is a symlink to {real}, outside scratch; not followed")
    return real


def stage_out_outputs(job: JobSpec, scratch: Path, job_dir: Path) -> list[dict[str, Any]]:
    """Publish every declared output in the job directory; returns their declarations."""
    return [_stage_out_file(spec, scratch, job_dir) for spec in job.outputs]


def _stage_out_file(spec: FileSpec, scratch: Path, job_dir: Path) -> dict[str, Any]:
    source = inside_scratch(scratch, spec.lfn)
    if not source.is_file():
        raise PilotError(ErrorCode.MISSING_OUTPUT, f"expected output {spec.lfn} was not produced")
    if source.stat().st_size == 0:
        raise PilotError(ErrorCode.EMPTY_OUTPUT, f"output {spec.lfn} is empty (zero size)")
    target = job_dir / spec.lfn
    try:
        with atomic_writer(target) as handle:
            running = copy_with_checksum(source, handle)
    except OSError as error:
        raise PilotError(ErrorCode.STAGEOUT_FAILED, f"cannot stage out {spec.lfn} to {job_dir}: {error}") from None
    return declaration("output", target, running, spec.guid)


def declaration(kind: str, path: Path, running: RunningChecksum, guid: str) -> dict[str, Any]:
    """One ``event_status.dump.json`` entry (PROTOCOL.md: ``type``, bare adler32)."""
    return {"type": kind, "path": str(path.absolute()), "fsize": running.size,
            "chksum": running.adler32, "guid": guid or str(uuid.uuid4())}


def write_log_tarball(job: JobSpec, scratch: Path, job_dir: Path, members: Iterable[str]) -> dict[str, Any]:
    """Pack ``members`` of scratch into the job's log tarball in the job directory."""
    assert job.log is not None
    target = job_dir / job.log.lfn
    folder = f"log.{job.pandaid}"
    try:
        with atomic_writer(target) as handle:
            writer = ChecksummingWriter(handle)
            with tarfile.open(fileobj=writer, mode="w|gz") as tar:
                for name in members:
                    if (scratch / name).is_file() or (scratch / name).is_symlink():
                        tar.add(scratch / name, arcname=f"{folder}/{name}", recursive=False)
    except (OSError, tarfile.TarError) as error:
        raise PilotError(ErrorCode.LOG_TARBALL_FAILED, f"cannot write log tarball {target.name}: {error}") from None
    return declaration("log", target, writer.checksum, job.log.guid)
