"""Run the generic site's script for real under mpiexec: the walltime timer warns the ranks.

The ranks are a stand-in ``hpcpilot`` executable (a small Python program
put first on PATH) so that this test pins the script's own behaviour:
SIGUSR1 before the walltime reaches every rank through mpiexec, the
launcher's exit status becomes the script's, and no timer is left behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpcpilot.batchscript import render_batch_script
from hpcpilot.sites import load_site

STAND_IN = textwrap.dedent('''\
    #!{python}
    import os, signal, sys, time
    access_point = sys.argv[sys.argv.index("--access-point") + 1]
    rank = os.environ.get("PMI_RANK", "0")

    def warned(signum, frame):
        open(os.path.join(access_point, "warned." + rank), "w").close()
        sys.exit(7)

    signal.signal(signal.SIGUSR1, warned)
    open(os.path.join(access_point, "started." + rank), "w").close()
    time.sleep(float(os.environ.get("STAND_IN_SECONDS", "60")))
''')


def _mpiexec_dir() -> Path:
    found = Path(sys.executable).parent / "mpiexec"
    if not found.exists():
        which = shutil.which("mpiexec")
        if not which:
            pytest.skip("no mpiexec")
        found = Path(which)
    return found.parent


@pytest.fixture
def stand_in_path(tmp_path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "hpcpilot"
    program.write_text(STAND_IN.format(python=sys.executable))
    program.chmod(0o755)
    # The stand-in first; mpiexec's own directory (not a shim that reorders PATH) next.
    return os.pathsep.join([str(bin_dir), str(_mpiexec_dir()), "/usr/bin", "/bin"])


def _script(tmp_path: Path, walltime: str, ranks_per_node: int, margin: int) -> tuple[Path, Path]:
    access_point = tmp_path / "ap"
    access_point.mkdir()
    script = tmp_path / "job.sh"
    script.write_text(render_batch_script(load_site("generic"), 1, walltime, access_point,
                                          ranks_per_node=min(ranks_per_node, load_site("generic").cores_per_node()),
                                          signal_margin=margin))
    return script, access_point


@pytest.mark.timeout(120)
def test_ranks_are_warned_before_the_walltime_and_their_status_is_the_scripts(tmp_path, stand_in_path):
    script, access_point = _script(tmp_path, "00:00:03", ranks_per_node=2, margin=1)
    result = subprocess.run(["bash", str(script)], env={**os.environ, "PATH": stand_in_path},
                            capture_output=True, text=True, timeout=90)
    started = sorted(path.name for path in access_point.glob("started.*"))
    warned = sorted(path.name for path in access_point.glob("warned.*"))
    assert started and len(warned) == len(started), (access_point / "hpcpilot.err").read_text()
    assert result.returncode == 7


@pytest.mark.timeout(120)
def test_script_ends_with_its_launcher_and_leaves_no_timer(tmp_path, stand_in_path):
    script, access_point = _script(tmp_path, "05:00:00", ranks_per_node=1, margin=300)
    environment = {**os.environ, "PATH": stand_in_path, "STAND_IN_SECONDS": "0"}
    result = subprocess.run(["bash", str(script)], env=environment, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, (access_point / "hpcpilot.err").read_text()
    assert not list(access_point.glob("warned.*"))
    time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-f", "sleep 17700"], capture_output=True, timeout=30)
    assert leftover.returncode == 1, "the walltime timer outlived the script"


@pytest.mark.timeout(120)
def test_sigterm_to_the_script_reaches_the_ranks(tmp_path, stand_in_path):
    script, access_point = _script(tmp_path, "05:00:00", ranks_per_node=1, margin=300)
    process = subprocess.Popen(["bash", str(script)], env={**os.environ, "PATH": stand_in_path})
    try:
        deadline = time.monotonic() + 60
        while not list(access_point.glob("started.*")) and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert status != 0  # the rank died of SIGTERM; the script reports a failure, not success
    assert not list(access_point.glob("warned.*"))
