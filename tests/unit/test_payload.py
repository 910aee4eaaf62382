"""Launching payloads: plain command lines exec'd directly, the rest through bash, with the same outcome."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcpilot import payload
from hpcpilot.payload import launch, launch_line, plain_command
from hpcpilot.proctree import TOKEN_ENV, new_token

ENV = {"PATH": os.environ["PATH"], TOKEN_ENV: new_token()}


@pytest.mark.parametrize("line, argv", [
    ("./run.sh --seed 42 --out=x.h5", ["./run.sh", "--seed", "42", "--out=x.h5"]),
    ("Sim_tf.py  --maxEvents 10\t--skip 0", ["Sim_tf.py", "--maxEvents", "10", "--skip", "0"]),
    ("true", ["true"]),
    ("prog a=b", ["prog", "a=b"]),
])
def test_plain_lines_are_programs_and_arguments(line: str, argv: list[str]) -> None:
    assert plain_command(line, ENV) == argv


@pytest.mark.parametrize("line", [
    "prog 'a b'", 'prog "$HOME"', "prog $HOME", "prog *.root", "prog ~/x", "prog > out", "a; b", "a && b",
    "prog {a,b}", "prog # comment", "prog `id`", "prog\nother", "A=1 prog", "echo hi", "cd /tmp", "exit 3",
    "time prog", "true --version", "",
])
def test_lines_bash_must_interpret_go_through_bash(line: str) -> None:
    assert plain_command(line, ENV) is None


@pytest.mark.parametrize("extra", [{"BASH_ENV": "/etc/profile"}, {"BASH_FUNC_prog%%": "() { echo fn; }"}])
def test_an_environment_bash_would_act_on_keeps_bash(extra: dict[str, str]) -> None:
    assert plain_command("prog", {**ENV, **extra}) is None


def _run(line: str, cwd: Path, direct: bool) -> tuple[list[str] | str, int, str]:
    env = {**ENV, "SHLVL": "1"}
    if direct:
        started = launch_line(line, cwd, env)
    else:
        started = launch([payload.bash(), "-c", line], cwd, env)
    code = started.wait().returncode
    return started.process.args, code, (cwd / payload.STDOUT_NAME).read_text()


@pytest.mark.timeout(60)
def test_a_plain_line_runs_as_bash_would_run_it(tmp_path: Path) -> None:
    script = tmp_path / "show.sh"
    script.write_text('#!/bin/sh\necho "$# $1 $2 pwd=$PWD shlvl=$SHLVL"\nexit 3\n')
    script.chmod(0o755)
    argv, code, direct_out = _run("./show.sh a=1 --x", tmp_path, direct=True)
    assert argv == ["./show.sh", "a=1", "--x"]  # no shell in between
    _, bash_code, bash_out = _run("./show.sh a=1 --x", tmp_path, direct=False)
    assert (code, direct_out) == (bash_code, bash_out) == (3, f"2 a=1 --x pwd={tmp_path} shlvl=1\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("line, exit_code, message", [
    ("no-such-program-hpcpilot --x", 127, "command not found"),
    ("./data.txt", 126, "Permission denied"),
])
def test_a_plain_line_that_cannot_be_exec_d_gets_bash_s_verdict(tmp_path: Path, line: str, exit_code: int,
                                                                 message: str) -> None:
    (tmp_path / "data.txt").write_text("not a program\n")
    started = launch_line(line, tmp_path, dict(ENV))
    assert started.wait().returncode == exit_code
    assert started.process.args[:2] == [payload.bash(), "-c"]
    assert message in (tmp_path / payload.STDERR_NAME).read_text()


@pytest.mark.timeout(60)
def test_a_script_without_interpreter_line_runs_as_bash_runs_it(tmp_path: Path) -> None:
    script = tmp_path / "bare.sh"
    script.write_text("echo from-bare-script\n")
    script.chmod(0o755)
    started = launch_line("./bare.sh", tmp_path, dict(ENV))
    assert started.wait().returncode == 0
    assert (tmp_path / payload.STDOUT_NAME).read_text() == "from-bare-script\n"
