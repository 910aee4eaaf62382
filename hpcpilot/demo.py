"""A built-in demo: an access point laid out as Harvester lays it, with about 16 real jobs.

Two jobs fail on purpose: one input's declared checksum is wrong (1171) and
one payload exits non-zero (1305). The rest run a numpy analysis of their
input and produce an output file and a job report.
"""
from __future__ import annotations

import errno
import sys
import time
from pathlib import Path

import numpy as np

from .accesspoint_writer import job_definition, replicas_dir, with_inputs, with_outputs, write_access_point
from .config import HarvesterFiles

FIRST_PANDAID = 5_000_001
BAD_CHECKSUM_INDEX = 13
FAILING_PAYLOAD_INDEX = 14


def default_directory() -> Path:
    return Path.cwd() / time.strftime("hpcpilot-demo-%Y%m%d-%H%M%S")


def make_demo(root: Path, n_jobs: int = 16, files: HarvesterFiles = HarvesterFiles()) -> Path:
    """Write the demo access point under ``root`` with the file names and spec format the pilot will read
    (``files``); returns it. OSError, nothing written, when ``root`` or its replicas' directory has files in it.
    """
    root = Path(root).absolute()
    for directory in (root, replicas_dir(root)):
        _refuse_used(directory)
    definitions, inputs = {}, {}
    for index in range(n_jobs):
        pandaid = FIRST_PANDAID + index
        data = np.random.default_rng(index).normal(size=20_000).astype("<f8").tobytes()
        name_in, name_out = f"EVNT.{pandaid}.dat", f"HIST.{pandaid}.npy"
        args = f"-m hpcpilot.demo_payload --input {name_in} --output {name_out}"
        if index == FAILING_PAYLOAD_INDEX:
            args += " --fail"
        definition = job_definition(pandaid, sys.executable, args, coreCount=2 if index % 4 == 0 else 1)
        with_outputs(with_inputs(definition, {name_in: data}), [name_out])
        if index == BAD_CHECKSUM_INDEX:
            definition["checksum"] = "ad:00000001"
        definitions[pandaid], inputs[pandaid] = definition, {name_in: data}
    return write_access_point(root, definitions, inputs, files)


def _refuse_used(directory: Path) -> None:
    """A directory with files in it may be a real worker's access point, whose jobs the demo would overwrite."""
    try:
        used = any(directory.iterdir())
    except FileNotFoundError:
        return
    if used:
        raise FileExistsError(errno.ENOTEMPTY, "not empty: the demo writes a new access point", str(directory))
