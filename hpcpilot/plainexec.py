"""Running a plain shell line without the shell, as ``bash -c line`` would run it.

For a line of plain words (no quoting, expansion, glob, redirection,
operator or comment) whose first word names a program, not a bash keyword,
builtin or variable assignment, bash does no more than search PATH and exec
the program in its own process. Doing both here saves a process start per
job, as GNU make does for simple recipe lines. Wherever bash would do more,
``plain_command`` returns None and the line goes to bash: when its
environment makes bash read a file or set options first (``BASH_ENV``,
``SHELLOPTS``, ``BASHOPTS``, an ssh session at shell level 0, where
Debian's bash reads ``.bashrc``), when an exported function could take the
program's name, when a PATH entry is not an absolute directory, when the
shell level is one bash would mend or warn about, and when PWD or HOME
already names the working directory (bash would keep that name for PWD). An
exec that fails is for the caller to hand to bash, which then reports it as
it always does. What differs: the order of the environment's entries.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Mapping

# A word bash passes on unchanged; words are separated by blanks, and a line may end in a newline.
_PLAIN_WORD = r"[A-Za-z0-9_./,:=+@%^-]+"
_PLAIN_LINE = re.compile(rf"[ \t\n]*({_PLAIN_WORD}(?:[ \t]+{_PLAIN_WORD})*)[ \t\n]*")
_BLANKS = re.compile(r"[ \t]+")
# What bash runs itself rather than as a program; true and false alone do what their programs do.
_BASH_OWN = frozenset(
    ". : [ [[ ]] { } ! alias bg bind break builtin caller case cd command compgen complete compopt continue "
    "coproc declare dirs disown do done echo elif else enable esac eval exec exit export false fc fg fi for "
    "function getopts hash help history if in jobs kill let local logout mapfile popd printf pushd pwd read "
    "readarray readonly return select set shift shopt source suspend test then time times trap true type "
    "typeset ulimit umask unalias unset until wait while".split())
_SAME_AS_PROGRAM = (["true"], ["false"])
# Variables bash reads at its start, or sets, resets or drops in what it hands on (bash 5.2, checked with
# ``env NAME=x bash -c 'printenv NAME'``): in the environment, they keep the line with bash.
_READ_BY_BASH = frozenset(
    "BASH_ENV SHELLOPTS BASHOPTS BASH BASHPID BASH_ARGV0 BASH_COMMAND BASH_EXECUTION_STRING BASH_SUBSHELL "
    "BASH_VERSINFO BASH_VERSION COMP_WORDBREAKS EPOCHREALTIME EPOCHSECONDS HISTCMD IFS LINENO OPTERR OPTIND "
    "PPID PS1 PS2 PS4 RANDOM SRANDOM".split())
_SSH_SESSION = ("SSH_CLIENT", "SSH2_CLIENT")


@dataclass(frozen=True)
class PlainCommand:
    program: str  # the file bash would exec: the first word, or what PATH gives for it
    argv: list[str]
    env: dict[str, str]  # with PWD, OLDPWD, SHLVL and _ as bash hands them on


def plain_command(line: str, cwd: str, env: Mapping[str, str]) -> PlainCommand | None:
    """How ``bash -c line`` run in ``cwd`` with ``env`` would exec its one program; None where bash does more."""
    match = _PLAIN_LINE.fullmatch(line)
    level = _shell_level(env)
    if match is None or level is None or _bash_would_act(env, level, cwd):
        return None
    words = _BLANKS.split(match.group(1))
    if "=" in words[0] or (words[0] in _BASH_OWN and words not in _SAME_AS_PROGRAM):
        return None
    program = _search(words[0], env)
    if program is None:
        return None
    return PlainCommand(program, words, _handed_environment(env, cwd, program, level))


def _shell_level(env: Mapping[str, str]) -> int | None:
    """SHLVL as bash's command gets it (bash adds one, then takes it back to exec); None for a value bash
    would mend or warn about."""
    text = env.get("SHLVL", "0")
    return int(text) if re.fullmatch(r"[0-9]{1,3}", text) and int(text) < 999 else None


def _bash_would_act(env: Mapping[str, str], level: int, cwd: str) -> bool:
    return (any(name in env for name in _READ_BY_BASH) or any(name.startswith("BASH_FUNC_") for name in env)
            or (level == 0 and any(name in env for name in _SSH_SESSION))
            or _names_directory(env.get("PWD"), cwd) or _names_directory(env.get("HOME"), cwd))


def _search(name: str, env: Mapping[str, str]) -> str | None:
    """Where bash finds ``name``: as given if it has a slash, else the first PATH entry holding an executable
    that is no directory. None where bash searches otherwise (no PATH, a relative or empty entry) or finds
    nothing to exec (then bash says why)."""
    if "/" in name:
        return name
    entries = env.get("PATH")
    if entries is None:
        return None
    for entry in entries.split(":"):
        if not entry.startswith("/"):
            return None
        candidate = os.path.join(entry, name)
        try:
            if stat.S_ISDIR(os.stat(candidate).st_mode):
                continue
        except OSError:
            continue
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _handed_environment(env: Mapping[str, str], cwd: str, program: str, level: int) -> dict[str, str]:
    """bash's command inherits PWD as the physical path of its directory, OLDPWD only if it names a
    directory, SHLVL as bash had it, and ``_`` set to the program."""
    handed = dict(env)
    handed["PWD"] = os.path.realpath(cwd)
    if "OLDPWD" in handed and not os.path.isdir(handed["OLDPWD"]):
        del handed["OLDPWD"]
    handed["SHLVL"] = str(level)
    handed["_"] = program
    return handed


def _names_directory(path: str | None, directory: str) -> bool:
    try:
        return path is not None and os.path.isabs(path) and os.path.samefile(path, directory)
    except OSError:
        return False
