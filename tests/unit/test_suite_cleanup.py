"""The suite's own safety net: a test that fails before ending what it started leaves nothing running."""
from __future__ import annotations

from pathlib import Path

import psutil
import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

FAILING_TEST = """
import os, signal, subprocess, sys
from tests.conftest import nothing_left_running  # the suite's autouse fixture, active in this module too

def test_fails_before_ending_its_stopped_child():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    os.kill(child.pid, signal.SIGSTOP)
    print("CHILD", child.pid)
    assert False
"""


@pytest.mark.timeout(120)
def test_a_stopped_process_a_failed_test_left_is_killed(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_inner=FAILING_TEST)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", timeout=100)
    result.assert_outcomes(failed=1)
    pid = int(next(line for line in result.outlines if "CHILD" in line).split("CHILD")[1])
    try:
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        pass
