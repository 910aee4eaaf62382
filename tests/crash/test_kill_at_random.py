"""The kill-at-random harness, as CI runs it: 30 SIGKILLs of a whole 2-rank worker, then completion."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import communicate_or_kill

HARNESS = Path(__file__).parents[2] / "scripts" / "kill_at_random.py"


@pytest.mark.timeout(900)
def test_thirty_kills_lose_nothing_and_declare_every_job_once() -> None:
    process = subprocess.Popen([sys.executable, str(HARNESS), "--kills", "30"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = communicate_or_kill(process, 850, "the kill-at-random harness")
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "kill 30/30: 0 problem(s)" in stdout
    assert "final run: 0 problem(s)" in stdout
