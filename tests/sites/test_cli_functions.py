"""The functions cli.py registers for `hpcpilot sites` and `hpcpilot batch-script`."""
from __future__ import annotations

import argparse

import pytest

from hpcpilot.batchscript import add_batch_script_arguments, run_batch_script
from hpcpilot.sites import list_sites, run_sites

from .conftest import bash_syntax_error


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hpcpilot batch-script")
    add_batch_script_arguments(parser)
    return parser.parse_args(argv)


def test_batch_script_command_writes_a_checked_script(tmp_path):
    output = tmp_path / "job.sh"
    args = _parse("--site", "nersc", "--nodes", "2", "--walltime", "00:45:00", "--access-point", "/shared/ap/1",
                  "--ranks-per-node", "2", "--directive=--account=m2616", "--pilot-args", "--stagein-mode link",
                  "--output", str(output))
    assert run_batch_script(args) == 0
    script = output.read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --account=m2616" in script
    assert "RANKS_PER_NODE=2" in script and script.rstrip().endswith("--site nersc --stagein-mode link")
    assert bash_syntax_error(script, tmp_path) == ""


def test_batch_script_command_prints_a_harvester_template(capsys):
    assert run_batch_script(_parse("--site", "theta", "--harvester-template")) == 0
    assert "#COBALT -n {nNode}" in capsys.readouterr().out


def test_batch_script_command_reports_a_bad_request_with_status_2(capsys):
    assert run_batch_script(_parse("--site", "titan", "--nodes", "1", "--walltime", "90")) == 2
    assert "walltime '90'" in capsys.readouterr().err


def test_batch_script_command_reports_an_unknown_site(capsys):
    assert run_batch_script(_parse("--site", "summit", "--harvester-template")) == 2
    assert "no site plugin named 'summit'" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (("--pilot-args", "'oops"), "--pilot-args \"'oops\": No closing quotation"),
    (("--output", "/nonexistent/dir/job.sh"), "cannot write /nonexistent/dir/job.sh"),
    (("--signal-margin", "-5"), "signal margin -5: must not be negative"),
    (("--signal-margin", "3600"), "signal margin 3600 s: must be shorter than the walltime (3600 s)"),
    ((), None),
])
def test_batch_script_mistakes_are_messages_with_status_2(capsys, options, message):
    """The default margin of 300 s fits an hour; the user's mistakes are messages, never tracebacks."""
    status = run_batch_script(_parse("--site", "bnl", "--nodes", "1", "--walltime", "01:00:00",
                                     "--access-point", "/shared/ap", *options))
    if message is None:
        assert status == 0 and "--signal=SIGUSR1@300" in capsys.readouterr().out
    else:
        assert status == 2 and message in capsys.readouterr().err


def test_batch_script_without_nodes_says_they_are_required(capsys):
    assert run_batch_script(_parse("--site", "bnl", "--walltime", "01:00:00", "--access-point", "/ap")) == 2
    assert "the number of nodes is required (--nodes N)" in capsys.readouterr().err


def test_sites_command_prints_one_line_per_site_with_one_marked(capsys):
    assert run_sites(argparse.Namespace()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_sites())
    assert sum(line.startswith("*") for line in lines) == 1
