"""An input whose copy (or, in link mode, checksum read) runs past its time limit fails its job with 1151: a real
pilot on 2 ranks, the input on a slow filesystem (FUSE, tests/slowfs.py), the limits tiny; the other job's input,
within its limit, is staged in and the job runs."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, write_access_point
from tests.e2e.conftest import run_pilot
from tests.multirank.test_stop_during_stagein import SIZE, partial_copies, with_slow_input

SLOW_JOB, QUICK_JOB = 8101, 8102
TINY_LIMITS = {"HPCPILOT_LIMITS__TRANSFER_TIMEOUT_BASE": "1", "HPCPILOT_LIMITS__TRANSFER_TIMEOUT_PER_MB": "0.001"}
# A copy past its limit ends after the chunk in flight, and is taken for hung transfer_timeout_base after its limit:
# that must outlast one 4 MiB chunk of the slow file (0.85 s idle, up to 3 s at nice 19 beside three busy loops).
COPY_LIMITS = {**TINY_LIMITS, "HPCPILOT_LIMITS__TRANSFER_TIMEOUT_BASE": "4"}
LIMIT = 4 + 0.001 * SIZE / (1 << 20)  # about 5 s, for minutes of copying


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["copy", "link"])
def test_an_input_past_its_time_limit_fails_its_job_with_1151(tmp_path: Path, slow_file, mode: str) -> None:
    replica = slow_file(SIZE)
    quick = with_inputs(job_definition(QUICK_JOB, "true"), {"in.dat": b"data"})
    ap = write_access_point(tmp_path / "ap", {SLOW_JOB: with_slow_input(job_definition(SLOW_JOB, "true"), replica),
                                              QUICK_JOB: quick}, {QUICK_JOB: {"in.dat": b"data"}})
    scratch = tmp_path / "scratch"
    started = time.monotonic()
    run = run_pilot(ap, "mpi2", "--scratch", str(scratch), "--stagein-mode", mode, "--keep-scratch",
                    env={**COPY_LIMITS, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}, timeout=120)
    assert time.monotonic() - started < 60, "the copy was not ended at its limit"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    slow = run.attributes(SLOW_JOB)
    assert (slow["jobStatus"], slow["pilotErrorCode"]) == ("failed", 1151), slow
    assert "big.root" in slow["pilotErrorDiag"] and f"limit of {LIMIT:.0f} s" in slow["pilotErrorDiag"], slow
    assert run.attributes(QUICK_JOB)["jobStatus"] == "finished"
    if mode == "copy":
        assert [path for path in partial_copies(scratch) if not path.is_symlink()] == []
