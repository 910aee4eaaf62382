"""Golden batch scripts for the four sites: directives and launcher line are pinned.

Regenerate after an intended change with REGENERATE_GOLDEN=1 and review the diff.
"""
from __future__ import annotations

import os
import re

import pytest

from hpcpilot.batchscript import BatchScriptError, parse_walltime, render_batch_script
from hpcpilot.sites import load_site

from .conftest import FOUR_SITES, GOLDEN_DIR

ACCESS_POINT = "/lustre/atlas/harvester/ap/worker-4242"
EXPECTED = {
    "titan": {
        "directives": ["#PBS -N hpcpilot", "#PBS -l nodes=4", "#PBS -l walltime=5400",
                       f"#PBS -o {ACCESS_POINT}/hpcpilot.out", f"#PBS -e {ACCESS_POINT}/hpcpilot.err"],
        "launcher": "aprun -n $RANKS -N $RANKS_PER_NODE -d $CORES_PER_RANK -cc depth hpcpilot run",
    },
    "theta": {
        "directives": ["#COBALT --mode script", "#COBALT -n 4", "#COBALT -t 90",
                       "#COBALT --attrs mcdram=cache:numa=quad:ssds=required:ssd_size=128"],
        "launcher": "aprun -n $RANKS -N $RANKS_PER_NODE -d $CORES_PER_RANK -j 1 -cc depth hpcpilot run",
    },
    "nersc": {
        "directives": ["#SBATCH --nodes=4", "#SBATCH --time=90", "#SBATCH --signal=SIGUSR1@300",
                       f"#SBATCH --output={ACCESS_POINT}/hpcpilot-%j.out", "#SBATCH --constraint=cpu"],
        "launcher": "exec srun --kill-on-bad-exit=1 --nodes=$NODES --ntasks-per-node=$RANKS_PER_NODE "
                    "--cpus-per-task=$((2 * CORES_PER_RANK)) --cpu-bind=cores hpcpilot run",
    },
    "bnl": {
        "directives": ["#SBATCH --nodes=4", "#SBATCH --time=90", "#SBATCH --signal=SIGUSR1@300",
                       "#SBATCH --exclusive"],
        "launcher": "exec srun --kill-on-bad-exit=1 --nodes=$NODES --ntasks-per-node=$RANKS_PER_NODE "
                    "--cpus-per-task=$CORES_PER_RANK hpcpilot run",
    },
}


def _render(name: str) -> str:
    return render_batch_script(load_site(name), 4, "01:30:00", ACCESS_POINT)


@pytest.mark.parametrize("name", FOUR_SITES)
def test_rendered_script_matches_its_golden_file(name):
    golden = GOLDEN_DIR / f"{name}.sh"
    script = _render(name)
    if os.environ.get("REGENERATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text()


@pytest.mark.parametrize("name", FOUR_SITES)
def test_directives_and_launcher_line(name):
    lines = _render(name).splitlines()
    for directive in EXPECTED[name]["directives"]:
        assert directive in lines
    launch = [line for line in lines if "hpcpilot run" in line]
    assert len(launch) == 1
    assert launch[0].startswith(EXPECTED[name]["launcher"])
    assert f'--access-point "$ACCESS_POINT" --site {name}' in launch[0]
    assert f"ACCESS_POINT='{ACCESS_POINT}'" in lines


@pytest.mark.parametrize("name", ["nersc", "bnl"])
def test_slurm_signal_reaches_the_job_steps_not_only_the_batch_shell(name):
    signal_lines = [line for line in _render(name).splitlines() if line.startswith("#SBATCH --signal")]
    assert signal_lines == ["#SBATCH --signal=SIGUSR1@300"]  # no "B:", which would spare the srun steps


@pytest.mark.parametrize("name", ["titan", "theta"])
def test_pbs_and_cobalt_scripts_signal_the_launcher_before_the_walltime(name):
    script = _render(name)
    assert "WALLTIME_SECONDS=5400" in script and "SIGNAL_MARGIN=300" in script
    assert 'kill -USR1 "$LAUNCHER_PID"' in script


def test_one_rank_per_node_by_default_and_more_on_request():
    assert "RANKS_PER_NODE=1" in _render("theta").splitlines()
    four = render_batch_script(load_site("theta"), 2, "00:10:00", ACCESS_POINT, ranks_per_node=4)
    assert "RANKS_PER_NODE=4" in four.splitlines()


def test_extra_directives_and_pilot_arguments_are_added():
    script = render_batch_script(load_site("nersc"), 1, "00:30:00", ACCESS_POINT,
                                 extra_args=["--stagein-mode", "link"], extra_directives=["--account=m2616"])
    assert "#SBATCH --account=m2616" in script.splitlines()
    assert re.search(r"--site nersc --stagein-mode link$", script, re.MULTILINE)


@pytest.mark.parametrize("directive", ["--account=m2616\nrm -rf $HOME", "--qos=debug\r"])
def test_a_directive_of_several_lines_is_refused(directive):
    """Its next line would run as a command of the batch script."""
    with pytest.raises(BatchScriptError, match="one line each"):
        render_batch_script(load_site("nersc"), 1, "00:30:00", ACCESS_POINT, extra_directives=[directive])


@pytest.mark.parametrize("bad", ["1:30", "01:61:00", "abc", "00:00:00", "8761:00:00"])
def test_bad_walltime_is_refused(bad):
    with pytest.raises(BatchScriptError, match="walltime"):
        parse_walltime(bad)


@pytest.mark.parametrize("access_point", ["relative/ap", "/has space/ap", "/brace{x}/ap", "/quote'/ap"])
def test_access_point_that_would_break_the_script_is_refused(access_point):
    with pytest.raises(BatchScriptError, match="access point"):
        render_batch_script(load_site("bnl"), 1, "00:10:00", access_point)


def test_more_ranks_than_cores_per_node_is_refused():
    with pytest.raises(BatchScriptError, match="ranks per node 17"):
        render_batch_script(load_site("titan"), 1, "00:10:00", ACCESS_POINT, ranks_per_node=17)
