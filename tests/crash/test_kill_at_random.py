"""The kill-at-random harness, as CI runs it: 30 SIGKILLs of a whole 2-rank worker, then completion."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).parents[2] / "scripts" / "kill_at_random.py"


@pytest.mark.timeout(900)
def test_thirty_kills_lose_nothing_and_declare_every_job_once() -> None:
    result = subprocess.run([sys.executable, str(HARNESS), "--kills", "30"], capture_output=True, text=True,
                            timeout=850)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "kill 30/30: 0 problem(s)" in result.stdout
    assert "final run: 0 problem(s)" in result.stdout
