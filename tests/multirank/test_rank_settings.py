"""Ranks started with settings of their own (mpiexec -env, a node's own environment): a mistake in one rank's
settings stops every rank at once, as the same mistake in all of them does."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpilot.accesspoint_writer import job_definition, write_access_point
from tests.e2e.conftest import communicate_or_kill

PROMPT = 60  # the others waited for the broken rank until startup_limit (1800 s)


def run_with_one_rank_set_apart(ap: Path, rank: int, options: list[str]) -> tuple[int, str]:
    """``hpcpilot run`` on two ranks, given the access point relative to the current directory; ``rank`` started
    with mpiexec's ``options`` (its environment, its directory) alone."""
    pilot = [sys.executable, "-m", "hpcpilot", "run", "--access-point", ap.name]
    ranks = [["-n", "1", *(options if r == rank else []), *pilot] for r in (0, 1)]
    process = subprocess.Popen(["mpiexec", *ranks[0], ":", *ranks[1]], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=os.environ, cwd=ap.parent,
                               start_new_session=True)
    _, stderr = communicate_or_kill(process, PROMPT, "two ranks, one of them misconfigured")
    return process.returncode, stderr


@pytest.mark.timeout(2 * PROMPT + 30)
@pytest.mark.parametrize("rank, options, message, others_say", [
    (1, ["-env", "HPCPILOT_CORES_PER_RANK", "many"], "configuration error: environment HPCPILOT_* cores_per_rank",
     "rank 0 stops too: rank(s) 1 cannot start"),
    (0, ["-env", "HPCPILOT_SITE_NAME", "nosuch"], "site error: no site plugin named 'nosuch'",
     "rank 1 stops too: rank(s) 0 cannot start"),
    # valid alone, but its jobs would be declared where Harvester does not look (or unredacted)
    (1, ["-env", "HPCPILOT_FILES__WORKER_ATTRIBUTES", "attributes.json"],
     "configuration error: rank 1's files.worker_attributes differ from rank 0's",
     "rank 0 stops too: rank(s) 1 have other worker-wide settings than rank 0"),
    (1, ["-env", "HPCPILOT_SECRET_KEYS", "myToken"], "configuration error: rank 1's secret_keys differ from rank 0's",
     "rank 0 stops too: rank(s) 1 have other"),
    (1, ["-wdir", "/"], "configuration error: rank 1's access_point differ from rank 0's",
     "rank 0 stops too: rank(s) 1 have other"),
    # rank 0 says it is alive every 60 s: rank 1 took it for dead after 2 s, aborted the worker, asked Harvester
    # to cancel it (kill_worker.json)
    (1, ["-env", "HPCPILOT_RANK_SILENCE_LIMIT", "2"], "configuration error: rank 1's rank_silence_limit differ",
     "rank 0 stops too: rank(s) 1 have other"),
])
def test_a_mistake_in_one_rank_s_settings_stops_every_rank_at_once(tmp_path: Path, rank, options, message,
                                                                     others_say) -> None:
    ap = write_access_point(tmp_path / "ap", {1: job_definition(1, "sleep", "5"), 2: job_definition(2, "sleep", "5")})
    returncode, stderr = run_with_one_rank_set_apart(ap, rank, options)
    assert returncode == 65 and message in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert others_say in stderr
    assert not (ap / "1" / "worker_attributes.json").exists() and not (ap / ".hpcpilot").exists()
    assert not (ap / "kill_worker.json").exists()
