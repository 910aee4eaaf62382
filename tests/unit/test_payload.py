"""Launching payloads: plain command lines exec'd as bash would exec them, the rest through bash; same outcome."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpilot import payload
from hpcpilot.payload import launch, launch_line
from hpcpilot.plainexec import plain_command
from hpcpilot.proctree import TOKEN_ENV, new_token

ENV = {"PATH": os.environ["PATH"], TOKEN_ENV: new_token(), "SHLVL": "1"}
SHOW_ENV = "import json, os, sys; print(json.dumps([sys.argv[1:], {k: os.environ.get(k) for k in %r}]))"
HANDED = ["PWD", "OLDPWD", "SHLVL", "_", "HOME"]


def argv_of(line: str, env: dict | None = None, cwd: str = "/") -> list[str] | None:
    plain = plain_command(line, cwd, {**ENV, **(env or {})})
    return None if plain is None else plain.argv


@pytest.mark.parametrize("line, argv", [
    ("./run.sh --seed 42 --out=x.h5", ["./run.sh", "--seed", "42", "--out=x.h5"]),
    ("cat  -n\t--squeeze-blank", ["cat", "-n", "--squeeze-blank"]),
    ("true", ["true"]),
    ("cat a=b\n", ["cat", "a=b"]),
])
def test_plain_lines_are_programs_and_arguments(line: str, argv: list[str]) -> None:
    assert argv_of(line) == argv


@pytest.mark.parametrize("line", [
    "cat 'a b'", 'cat "$HOME"', "cat $HOME", "cat *.root", "cat ~/x", "cat > out", "a; b", "a && b",
    "cat {a,b}", "cat # comment", "cat `id`", "cat\nother", "A=1 cat", "echo hi", "cd /tmp", "exit 3",
    "time cat", "true --version", "", "cat x\r", "true\xa0", "true\x0b", "no-such-program-hpcpilot",
])
def test_lines_bash_must_interpret_or_look_up_go_through_bash(line: str) -> None:
    assert argv_of(line) is None


@pytest.mark.parametrize("env", [
    {"BASH_ENV": "/etc/profile"}, {"BASH_FUNC_cat%%": "() { echo fn; }"}, {"SHELLOPTS": "xtrace"},
    {"BASHOPTS": "extglob"}, {"SSH_CLIENT": "10.0.0.1 5000 22", "SHLVL": "0"}, {"SHLVL": "abc"},
    {"SHLVL": "999"}, {"PATH": "bin:/usr/bin"}, {"PATH": "~/bin:/usr/bin"}, {"PATH": ":/usr/bin"},
], ids=lambda env: "+".join(f"{k}={v}" for k, v in env.items()))
def test_an_environment_bash_would_act_on_keeps_bash(env: dict[str, str]) -> None:
    assert argv_of("cat", env) is None


BASH_SETS = ("BASH", "BASH_VERSION", "EPOCHSECONDS", "IFS", "LINENO", "OPTERR", "OPTIND", "PPID", "PS1", "PS2",
             "PS4", "RANDOM", "SRANDOM", "BASHPID", "BASH_EXECUTION_STRING")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", BASH_SETS)
def test_a_variable_bash_sets_or_drops_keeps_bash(name: str) -> None:
    """bash hands these on changed or not at all: exec'd without bash, a payload would see them otherwise."""
    assert argv_of("cat", {name: "sentinel"}) is None
    shown = subprocess.run(["bash", "-c", f"printenv {name}; true"], env={**ENV, name: "sentinel"},
                           capture_output=True, text=True, timeout=20).stdout
    assert shown != "sentinel\n"  # what makes the test necessary, on this machine's bash


def test_an_ssh_session_above_shell_level_0_does_not_make_bash_read_bashrc() -> None:
    assert argv_of("cat", {"SSH_CLIENT": "10.0.0.1 5000 22", "SHLVL": "1"}) == ["cat"]


def test_pwd_or_home_naming_the_directory_keeps_bash(tmp_path: Path) -> None:
    assert argv_of("cat", {"PWD": str(tmp_path)}, cwd=str(tmp_path)) is None
    assert argv_of("cat", {"HOME": str(tmp_path)}, cwd=str(tmp_path)) is None


def _show_script(directory: Path, name: str = "show") -> Path:
    script = directory / name
    script.write_text(f"#!{sys.executable}\n" + SHOW_ENV % HANDED + "\n")
    script.chmod(0o755)
    return script


def _outcome(line: str, cwd: Path, env: dict[str, str], direct: bool) -> tuple[list[str] | str, int, str, str]:
    started = launch_line(line, cwd, env) if direct else launch([payload.bash(), "-c", line], cwd, env)
    code = started.wait().returncode
    out, err = (cwd / payload.STDOUT_NAME).read_text(), (cwd / payload.STDERR_NAME).read_text()
    return started.process.args, code, out, err


def _same_as_bash(line: str, cwd: Path, env: dict[str, str]) -> tuple[list[str] | str, str, str]:
    """Runs ``line`` both ways; asserts the same exit, output and errors; returns what ran, output, errors."""
    args, code, out, err = _outcome(line, cwd, env, direct=True)
    _, bash_code, bash_out, bash_err = _outcome(line, cwd, env, direct=False)
    assert (code, out, err) == (bash_code, bash_out, bash_err)
    return args, out, err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("oldpwd", ["/", "/no/such/dir"])
def test_a_plain_line_gets_the_arguments_and_variables_bash_would_give(tmp_path: Path, oldpwd: str) -> None:
    """Run in a symlinked directory, as a scratch may be: PWD is the physical path, as bash sets it."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _show_script(bin_dir)
    env = {**ENV, "PATH": f"{bin_dir}:{ENV['PATH']}", "OLDPWD": oldpwd, "HOME": "/root", "_": "/pilot"}
    args, out, _ = _same_as_bash("show a=1 --x", tmp_path / "link", env)
    assert args == ["show", "a=1", "--x"]  # exec'd, no shell in between
    shown_argv, variables = json.loads(out)
    assert shown_argv == ["a=1", "--x"] and variables["PWD"] == str(real) and variables["_"] == str(bin_dir / "show")


@pytest.mark.timeout(60)
def test_the_path_search_stops_where_bash_s_does(tmp_path: Path) -> None:
    """bash takes the first executable along PATH, even a script without #! (which it runs itself) or one
    whose interpreter is missing (then it fails); it never goes on to a later one."""
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir(), later.mkdir()
    (first / "tool").write_text("echo from-first-script\n")
    (first / "tool2").write_text("#!/no/such/interpreter\n")
    (first / "notexec").write_text("echo not executable\n")
    for name in ("tool", "tool2", "notexec"):
        _show_script(later, name)
    (first / "tool").chmod(0o755)
    (first / "tool2").chmod(0o755)
    env = {**ENV, "PATH": f"{first}:{later}:{ENV['PATH']}"}
    _, out, _ = _same_as_bash("tool", tmp_path, env)
    assert out == "from-first-script\n"
    _, out, err = _same_as_bash("tool2", tmp_path, env)
    assert out == "" and err, "bash says it cannot run it"
    args, out, _ = _same_as_bash("notexec", tmp_path, env)  # not executable in the first: bash goes on
    assert args == ["notexec"] and json.loads(out)[0] == []


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
def test_exec_of_plain_lines_can_be_switched_off(tmp_path: Path) -> None:
    started = launch_line("true", tmp_path, dict(ENV), exec_plain=False)
    assert started.wait().returncode == 0 and started.process.args == [payload.bash(), "-c", "true"]
