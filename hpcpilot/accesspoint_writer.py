"""Lay out an access point exactly as Harvester does (the demo, tests and benchmarks use it).

This plays Harvester's part: ``worker_pandaids.json``, one ``<PandaID>/``
directory per job with ``HPCJobs.json``, ``PoolFileCatalog_H.xml`` and a
symlink per input LFN pointing at the staged replica. OneToOne puts the job's
files at the top, next to a ``worker_pandaids.json`` all the same.
"""
from __future__ import annotations

import json
import urllib.parse
import zlib
from pathlib import Path
from typing import Any, Mapping

from .config import HarvesterFiles
from .staging import pool_file_catalog


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def write_access_point(
    root: Path,
    definitions: Mapping[int, Mapping[str, Any]],
    inputs: Mapping[int, Mapping[str, bytes]] | None = None,
    files: HarvesterFiles = HarvesterFiles(),
    many_to_one: bool = True,
) -> Path:
    """Write a worker's access point; ``inputs[pandaid][lfn]`` are the replica bytes.

    The replicas go to ``root/../<root name>-replicas`` (Harvester's staging
    area) and each job directory links to them by LFN.
    """
    root = Path(root).absolute()  # the input links must resolve from inside the job directories
    root.mkdir(parents=True, exist_ok=True)
    replicas = replicas_dir(root)
    # Harvester's feed_jobs writes the PandaIDs file for every layout, OneToOne included
    (root / files.worker_pandaids).write_text(json.dumps([int(p) for p in definitions]))
    for pandaid, definition in definitions.items():
        job_dir = root / str(pandaid) if many_to_one else root
        job_dir.mkdir(exist_ok=True)
        (job_dir / files.job_spec).write_text(_spec_text({str(pandaid): dict(definition)}, files.job_spec_format))
        job_inputs = (inputs or {}).get(pandaid, {})
        _stage_replicas(job_dir, replicas / str(pandaid), job_inputs)
        (job_dir / files.pool_file_catalog).write_text(_pool_file_catalog(definition, job_dir))
    return root


def replicas_dir(root: Path) -> Path:
    """Where the replicas of the access point ``root`` go: beside it, as Harvester's staging area."""
    return root.parent / f"{root.name}-replicas"


def _spec_text(content: dict[str, dict[str, Any]], spec_format: str) -> str:
    if spec_format == "cgi":
        (definition,) = content.values()
        return urllib.parse.urlencode({k: str(v) for k, v in definition.items()})
    return json.dumps(content)


def _stage_replicas(job_dir: Path, replica_dir: Path, job_inputs: Mapping[str, bytes]) -> None:
    for lfn, data in job_inputs.items():
        replica_dir.mkdir(parents=True, exist_ok=True)
        (replica_dir / lfn).write_bytes(data)
        link = job_dir / lfn
        if not link.is_symlink():
            link.symlink_to(replica_dir / lfn)


def _pool_file_catalog(definition: Mapping[str, Any], job_dir: Path) -> str:
    lfns = [n for n in str(definition.get("inFiles", "")).split(",") if n and n != "NULL"]
    guids = str(definition.get("GUID", "")).split(",")
    return pool_file_catalog((guids[i] if i < len(guids) else "", str(job_dir / lfn), lfn)
                             for i, lfn in enumerate(lfns))


def job_definition(pandaid: int, command: str, args: str = "", **fields: Any) -> dict[str, Any]:
    """A PanDA job definition with the fields Harvester passes, overridable by ``fields``."""
    definition: dict[str, Any] = {
        "PandaID": str(pandaid), "taskID": "1000", "jobsetID": "NULL", "attemptNr": 1,
        "transformation": command, "jobPars": args, "coreCount": 1, "minRamCount": 0,
        "maxWalltime": "NULL", "inFiles": "NULL", "outFiles": f"log.{pandaid}.job.log.tgz",
        "logFile": f"log.{pandaid}.job.log.tgz", "logGUID": f"00000000-0000-0000-0000-{pandaid:012d}",
        "scopeOut": "hpcpilot", "scopeLog": "hpcpilot", "prodSourceLabel": "managed",
    }
    definition.update(fields)
    return definition


def with_inputs(definition: dict[str, Any], files: Mapping[str, bytes]) -> dict[str, Any]:
    """Add aligned input fields (names, sizes, adler32 checksums, GUIDs) for ``files``."""
    names = list(files)
    definition.update(
        inFiles=",".join(names),
        fsize=",".join(str(len(files[n])) for n in names),
        checksum=",".join("ad:" + adler32_hex(files[n]) for n in names),
        GUID=",".join(f"{definition['PandaID']}-guid-{i}" for i in range(len(names))),
        scopeIn="hpcpilot",
    )
    return definition


def with_outputs(definition: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Declare ``names`` as outputs (before the log file, as PanDA lists them)."""
    definition["outFiles"] = ",".join([*names, definition["logFile"]])
    return definition
