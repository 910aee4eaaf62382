"""What the README promises an operator, checked against the code: its YAML example, its exit codes, its Layout."""
from __future__ import annotations

import re
from pathlib import Path

from hpcpilot.cli import RUN_DESCRIPTION, build_parser
from hpcpilot.config import load_config
from hpcpilot.errors import ExitCode

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
ARGPARSE_USAGE_ERROR = 2  # argparse's, not the pilot's own: no ExitCode
NOT_RETURNED = {ExitCode.FAILURE, ExitCode.NO_LOCAL_SPACE}  # kept for wrappers (errors.py says why)


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _fenced(text: str, language: str = "") -> str:
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def _exit_code_paragraph() -> str:
    return " ".join(README.split("Exit codes: ", 1)[1].split("\n\n", 1)[0].split())


def _codes(text: str, separator: str) -> set[int]:
    """The codes a list such as '0 every job ..., 2 a bad ...' names (not the N of 128+N, nor numbers in its
    parentheses)."""
    return {int(code) for code in re.findall(rf"(?:^|[{separator}]\s)(\d+)\s(?=[a-z`])", text)}


def test_the_yaml_example_loads_as_it_is(tmp_path):
    example = _fenced(_section("Command line"), "yaml").replace("/lustre/harvester/worker-1234", str(tmp_path))
    (tmp_path / "example.yaml").write_text(example)
    config = load_config(tmp_path / "example.yaml", environ={})
    assert (config.access_point, config.site_name, config.files.job_spec) == (tmp_path, "nersc", "HPCJobs.json")
    assert (config.limits.walltime_default, config.limits.memory_limit_mb) == (86400, 0)


def test_every_exit_code_the_readme_lists_is_one_the_pilot_has():
    listed = _codes(_exit_code_paragraph(), ",:")
    assert listed - {ARGPARSE_USAGE_ERROR} <= {int(code) for code in ExitCode}
    assert {int(code) for code in ExitCode} - {int(code) for code in NOT_RETURNED} <= listed
    assert "128+N stopped by signal N" in _exit_code_paragraph()


def test_run_help_lists_the_exit_codes_the_readme_lists():
    help_codes = RUN_DESCRIPTION.split("exit codes: ", 1)[1]
    assert _codes(" ".join(help_codes.split()), ";:") == _codes(_exit_code_paragraph(), ",:")


def _layout_names() -> set[str]:
    """The paths of the package the Layout section names, relative to hpcpilot/."""
    lines = _fenced(_section("Layout")).splitlines()
    inside = [line.strip() for line in lines if line.startswith("  ")]
    names = set()
    for line in inside:
        names.update(re.match(r"[\w/.]+(?:, [\w/.]+)*", line).group().split(", "))
    return names


def test_the_layout_names_every_module_of_the_package_and_only_those():
    package = ROOT / "hpcpilot"
    modules = {str(path.relative_to(package)) for path in package.glob("*.py")} | \
        {str(path.relative_to(package)) for path in package.glob("workflow/*.py")} | \
        {f"{path.name}/" for path in package.iterdir() if path.is_dir() and path.name not in ("workflow", "__pycache__")}
    modules -= {"__init__.py", "__main__.py", "workflow/__init__.py"}
    assert _layout_names() == modules


def test_every_option_the_readme_names_for_run_is_one_run_takes():
    table = _section("Command line").split("| option | meaning |", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`(--[a-z-]+)", table))
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    taken = {option for action in run._actions for option in action.option_strings}
    assert named and named <= taken
