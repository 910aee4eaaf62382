"""Sites: what differs between machines, behind a few hooks with generic defaults.

A site plugin is registered under the entry point group ``hpcpilot.sites``;
its target is a zero-argument callable (usually a ``Site`` subclass) that
returns the site object. Site data (paths, sizes, module lines, launcher
line) live in a YAML file beside the plugin module, not in code.

Choosing: an explicit name, else the first site whose ``detect`` matches the
environment (in name order), else ``generic``. Plugins are validated when
loaded, pluggy-style: an error names the plugin and what is wrong.
"""
from __future__ import annotations

import argparse
import inspect
import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import yaml

from .allocation import CoreMemory, allocation_memory_per_core
from .errors import ErrorCode, ExitCode, PilotError
from .nodename import node_name

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hpcpilot.sites"
GENERIC_SITE = "generic"
SCHEDULERS = ("slurm", "pbs", "cobalt", "none")
DATA_FILE = "site.yaml"
# What the node hooks answer for a site.yaml that states no node figures (batch scripts need a number).
PLACEHOLDER_CORES_PER_NODE = 1
PLACEHOLDER_MEMORY_PER_NODE_MB = 2048


class SitePluginError(Exception):
    """A site plugin that cannot be used; the message names the plugin and the problem."""


@dataclass(frozen=True)
class SiteData:
    """The facts about one site, as written in its YAML file."""

    name: str
    description: str = "a machine hpcpilot knows nothing particular about"
    scheduler: str = "none"
    launcher: str = "mpiexec -n $RANKS"
    cores_per_node: int | None = None  # None: not stated in site.yaml
    memory_per_node_mb: int | None = None
    scratch_candidates: tuple[str, ...] = ()
    min_scratch_free_mb: int = 1024
    setup_lines: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    container_runtimes: tuple[str, ...] = ()
    container_options: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    container_shell: str = "/bin/bash"
    batch_directives: tuple[str, ...] = ()
    batch_setup_lines: tuple[str, ...] = ()
    batch_template: str = "batch.sh.in"
    signal_margin_seconds: int = 300
    detect_rules: tuple[Mapping[str, str], ...] = ()
    sample_environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    plugin_dir: Path | None = None


# YAML layout -> SiteData field; nested keys are written "section.key".
_YAML_KEYS = {
    "name": "name",
    "description": "description",
    "scheduler": "scheduler",
    "launcher": "launcher",
    "cores_per_node": "cores_per_node",
    "memory_per_node_mb": "memory_per_node_mb",
    "scratch.candidates": "scratch_candidates",
    "scratch.min_free_mb": "min_scratch_free_mb",
    "setup_lines": "setup_lines",
    "environment": "environment",
    "container.runtimes": "container_runtimes",
    "container.options": "container_options",
    "container.shell": "container_shell",
    "batch.directives": "batch_directives",
    "batch.setup_lines": "batch_setup_lines",
    "batch.template": "batch_template",
    "batch.signal_margin_seconds": "signal_margin_seconds",
    "detect.any": "detect_rules",
    "detect.sample_environment": "sample_environment",
}


_SECTIONS = frozenset(key.split(".")[0] for key in _YAML_KEYS if "." in key)


def _flatten(content: Mapping[str, Any], where: str) -> dict[str, Any]:
    """{"scratch": {"candidates": [...]}} -> {"scratch.candidates": [...]}, one level deep."""
    flat: dict[str, Any] = {}
    for key, value in content.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise SitePluginError(f"{where}: {key!r} must be a section (a mapping)")
            flat.update({f"{key}.{sub}": sub_value for sub, sub_value in value.items()})
        else:
            flat[key] = value
    unknown = sorted(set(flat) - set(_YAML_KEYS))
    if unknown:
        raise SitePluginError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_YAML_KEYS))}")
    return flat


def _string_tuple(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SitePluginError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _string_mapping(value: Any, where: str) -> Mapping[str, str]:
    """{variable: text}: environment variables, and detect rules (variable: regex)."""
    if not isinstance(value, dict):
        raise SitePluginError(f"{where}: expected a mapping, got {value!r}")
    return MappingProxyType({_variable_name(key, where): _scalar_text(item, f"{where}.{key}")
                             for key, item in value.items()})


def _variable_name(key: Any, where: str) -> str:
    """An environment variable's name; one with '=' or NUL would fail every payload's start."""
    name = str(key)
    if not name or "=" in name or "\0" in name:
        raise SitePluginError(f"{where}: {key!r} cannot name an environment variable")
    return name


def _scalar_text(value: Any, where: str) -> str:
    """A string or number as text. YAML's null, yes/no, lists and mappings are mistakes, not the texts
    'None', 'True', '[...]' a payload would get."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SitePluginError(f"{where}: expected a string or a number, got {value!r}")
    text = str(value)
    if "\0" in text:
        raise SitePluginError(f"{where}: a NUL character cannot be in an environment variable")
    return text


def _convert_field(name: str, value: Any, where: str) -> Any:
    """One YAML value, checked and converted to the type of SiteData field ``name``."""
    if name in ("cores_per_node", "memory_per_node_mb", "min_scratch_free_mb", "signal_margin_seconds"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SitePluginError(f"{where}: expected a non-negative integer, got {value!r}")
        return value
    if name in ("scratch_candidates", "setup_lines", "container_runtimes", "batch_directives", "batch_setup_lines"):
        return _string_tuple(value, where)
    if name in ("environment", "sample_environment"):
        return _string_mapping(value, where)
    if name == "container_options":
        mapping = value if isinstance(value, dict) else None
        if mapping is None:
            raise SitePluginError(f"{where}: expected a mapping of runtime -> list of options")
        return MappingProxyType({key: _string_tuple(item, f"{where}.{key}") for key, item in mapping.items()})
    if name == "detect_rules":
        if not isinstance(value, list):
            raise SitePluginError(f"{where}: expected a list of {{VARIABLE: regex}} mappings")
        return tuple(_string_mapping(rule, f"{where}[{index}]") for index, rule in enumerate(value))
    if not isinstance(value, str):
        raise SitePluginError(f"{where}: expected a string, got {value!r}")
    return value


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where PyYAML has it


def load_site_data(path: Path) -> SiteData:
    """Read and check a site YAML file; errors name the file and the key."""
    try:
        content = yaml.load(Path(path).read_text(), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as error:
        raise SitePluginError(f"site data {path}: {error}") from None
    if not isinstance(content, dict) or "name" not in content:
        raise SitePluginError(f"site data {path}: expected a mapping with at least 'name'")
    values = {
        _YAML_KEYS[key]: _convert_field(_YAML_KEYS[key], value, f"site data {path}: {key}")
        for key, value in _flatten(content, f"site data {path}").items()
    }
    data = SiteData(**values, plugin_dir=Path(path).parent)
    if data.scheduler not in SCHEDULERS:
        raise SitePluginError(f"site data {path}: scheduler {data.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    for rule in data.detect_rules:
        for variable, pattern in rule.items():
            _compile(pattern, f"site data {path}: detect rule for {variable}")
    return data


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise SitePluginError(f"{where}: bad regular expression {pattern!r}: {error}") from None


def _expand(candidate: str, environ: Mapping[str, str]) -> Path | None:
    """'$TMPDIR/x' -> Path, or None when a variable it names is unset or empty."""
    missing = [name for name in re.findall(r"\$\{?(\w+)\}?", candidate) if not environ.get(name)]
    if missing:
        return None
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda match: environ[match.group(1)], candidate)
    return Path(expanded).expanduser()


def _usable_scratch(path: Path, min_free_bytes: int) -> str | None:
    """Why ``path`` cannot hold job scratch directories, or None when it can."""
    if not path.is_dir():
        return "missing"
    if not os.access(path, os.W_OK | os.X_OK):
        return "not writable"
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        return f"only {free} bytes free, need {min_free_bytes}"
    return None


class Site:
    """A machine hpcpilot runs on. Every hook has a generic default driven by ``SiteData``.

    Subclasses usually only point at their YAML file (it is found beside the
    module defining the subclass) and override ``detect`` when a rule list is
    not enough.
    """

    data_file = DATA_FILE

    def __init__(self, data: SiteData | None = None):
        self.data = data if data is not None else load_site_data(self._default_data_path())
        self.name = self.data.name

    @classmethod
    def _default_data_path(cls) -> Path:
        module = sys.modules[cls.__module__]
        return Path(module.__file__).resolve().parent / cls.data_file

    # -- recognising the machine ------------------------------------------

    def detect(self, environ: Mapping[str, str]) -> bool:
        """True when ``environ`` says we run on this site: any rule whose every variable matches."""
        return any(self._rule_matches(rule, environ) for rule in self.data.detect_rules)

    @staticmethod
    def _rule_matches(rule: Mapping[str, str], environ: Mapping[str, str]) -> bool:
        return bool(rule) and all(
            variable in environ and re.fullmatch(pattern, environ[variable]) is not None
            for variable, pattern in rule.items()
        )

    def sample_environment(self) -> dict[str, str]:
        """An environment as found on this site (documentation, and the contract tests)."""
        return dict(self.data.sample_environment)

    # -- node-local scratch -------------------------------------------------

    def scratch_candidates(self, environ: Mapping[str, str]) -> list[Path]:
        """Node-local scratch locations in order of preference; unset variables drop a candidate."""
        expanded = (_expand(candidate, environ) for candidate in self.data.scratch_candidates)
        return [path for path in expanded if path is not None]

    def min_scratch_free_bytes(self) -> int:
        return self.data.min_scratch_free_mb * 1024 * 1024

    def choose_scratch(self, config_scratch: Path | None, environ: Mapping[str, str]) -> Path:
        """The directory under which job scratch directories go.

        An explicit directory wins (created if needed); else the first
        candidate that exists, is writable and has the minimum free space;
        else $TMPDIR; else the system temporary directory.
        """
        if config_scratch is not None:
            return _explicit_scratch(Path(config_scratch))
        min_free = self.min_scratch_free_bytes()
        for candidate in self.scratch_candidates(environ):
            problem = _usable_scratch(candidate, min_free)
            if problem is None:
                return candidate
            log.info("site %s: scratch candidate %s skipped: %s", self.name, candidate, problem)
        if environ.get("TMPDIR") and _usable_scratch(Path(environ["TMPDIR"]), 0) is None:
            return Path(environ["TMPDIR"])
        return Path(tempfile.gettempdir())

    # -- payload ----------------------------------------------------------------

    def payload_environment(self, job_core_count: int) -> dict[str, str]:
        """Variables to set for a payload using ``job_core_count`` cores, site values last."""
        cores = str(max(1, int(job_core_count)))
        environment = {"OMP_NUM_THREADS": cores, "ATHENA_CORE_NUMBER": cores}
        if int(cores) > 1:  # a set ATHENA_PROC_NUMBER switches Athena to multi-process mode
            environment["ATHENA_PROC_NUMBER"] = cores
        environment.update(self.data.environment)
        return environment

    def setup_lines(self) -> list[str]:
        """Shell lines to run before the payload (module loads, setup scripts)."""
        return list(self.data.setup_lines)

    def container_runtimes(self) -> list[str]:
        """Container runtimes this site offers, most preferred first."""
        return list(self.data.container_runtimes)

    def container_options(self, runtime: str) -> list[str]:
        """Extra options the site gives ``runtime`` after its run/exec word."""
        return list(self.data.container_options.get(runtime, ()))

    def container_shell(self) -> str:
        """The shell that runs the payload command line inside a container."""
        return self.data.container_shell

    # -- batch scripts ----------------------------------------------------------

    def scheduler(self) -> str:
        """One of ``SCHEDULERS``."""
        return self.data.scheduler

    def launcher_line(self) -> str:
        """The MPI launcher; may use $NODES, $RANKS, $RANKS_PER_NODE, $CORES_PER_RANK."""
        return self.data.launcher

    def batch_directives(self) -> list[str]:
        """Site-specific scheduler directives (without the #SBATCH/#PBS/#COBALT prefix)."""
        return list(self.data.batch_directives)

    def batch_setup_lines(self) -> list[str]:
        """Shell lines in the batch script before the launcher (e.g. to put hpcpilot on PATH)."""
        return list(self.data.batch_setup_lines)

    def batch_template(self) -> str:
        """Text of this site's batch script template (Harvester placeholders + hpcpilot_* ones)."""
        if self.data.plugin_dir is None:
            raise SitePluginError(f"site {self.name}: no plugin directory holds its {self.data.batch_template}")
        path = self.data.plugin_dir / self.data.batch_template
        try:
            return path.read_text()
        except OSError as error:  # a misnamed or missing batch.template: say which site and file
            raise SitePluginError(f"site {self.name}: batch template {path}: {error.strerror}") from None

    def signal_margin_seconds(self) -> int:
        """How long before the walltime limit the pilot is told to wrap up (SIGUSR1)."""
        return self.data.signal_margin_seconds

    # -- resources and description ---------------------------------------------

    def cores_per_node(self) -> int:
        stated = self.data.cores_per_node
        return PLACEHOLDER_CORES_PER_NODE if stated is None else stated

    def memory_per_node_mb(self) -> int:
        stated = self.data.memory_per_node_mb
        return PLACEHOLDER_MEMORY_PER_NODE_MB if stated is None else stated

    def memory_per_core(self) -> CoreMemory:
        """RAM per core, for the memory limit of a job without minRamCount: the node's memory over its cores
        where site.yaml states both, else (its figures would be placeholders) what this process's allocation
        gives (its cgroup's or Slurm's memory over its CPUs), else this machine's own."""
        if not (self.data.cores_per_node and self.data.memory_per_node_mb):
            return allocation_memory_per_core()
        memory, cores = self.memory_per_node_mb(), self.cores_per_node()
        origin = f"site {self.name}"
        return CoreMemory(memory / cores, f"{origin}: {memory} MB / {cores} cores per node", origin)

    def describe(self) -> str:
        """One line for humans: what the site is and how it runs."""
        data = self.data
        runtimes = "/".join(self.container_runtimes()) or "none"
        scratch = ", ".join(data.scratch_candidates) or "$TMPDIR"
        return (
            f"{data.description}; {self.scheduler()} + {self.launcher_line().split()[0]}; "
            f"{self.cores_per_node()} cores, {self.memory_per_node_mb()} MB per node; "
            f"scratch {scratch}; containers {runtimes}"
        )


def _explicit_scratch(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PilotError(ErrorCode.MKDIR_FAILED, f"cannot create scratch directory {path}: {error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PilotError(ErrorCode.MKDIR_FAILED, f"scratch directory {path} is not writable")
    return path


# Hooks every site object must offer, with the parameters hpcpilot passes.
HOOKS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "detect": ("environ",),
    "sample_environment": (),
    "scratch_candidates": ("environ",),
    "choose_scratch": ("config_scratch", "environ"),
    "payload_environment": ("job_core_count",),
    "setup_lines": (),
    "container_runtimes": (),
    "container_options": ("runtime",),
    "container_shell": (),
    "scheduler": (),
    "launcher_line": (),
    "batch_directives": (),
    "batch_setup_lines": (),
    "batch_template": (),
    "signal_margin_seconds": (),
    "cores_per_node": (),
    "memory_per_node_mb": (),
    "memory_per_core": (),
    "describe": (),
})


def _hook_problem(site: object, hook: str, parameters: tuple[str, ...]) -> str | None:
    implementation = getattr(site, hook, None)
    if implementation is None:
        return f"lacks hook {hook}({', '.join(parameters)})"
    if not callable(implementation):
        return f"hook {hook} is not callable"
    try:
        inspect.signature(implementation).bind(*parameters)
    except TypeError:
        return f"hook {hook} cannot be called as {hook}({', '.join(parameters)})"
    except ValueError:  # no signature available (builtins): trust it
        return None
    return None


def validate_site(site: object, plugin: str) -> object:
    """Check that ``site`` offers every hook; raise SitePluginError naming ``plugin`` otherwise."""
    problems = [problem for hook, params in HOOKS.items() if (problem := _hook_problem(site, hook, params))]
    name = getattr(site, "name", None)
    if not isinstance(name, str) or not name:
        problems.append("has no 'name' attribute (a non-empty string)")
    if not problems and site.scheduler() not in SCHEDULERS:
        problems.append(f"scheduler() returned {site.scheduler()!r}; expected one of {', '.join(SCHEDULERS)}")
    if problems:
        raise SitePluginError(f"site plugin {plugin}: " + "; ".join(problems))
    return site


# -- discovery ---------------------------------------------------------------


def _site_entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        previous = found.get(entry_point.name)
        if previous is not None and previous.value != entry_point.value:
            raise SitePluginError(
                f"site plugin {entry_point.name!r}: registered twice ({previous.value} and {entry_point.value})"
            )
        found[entry_point.name] = entry_point
    return found


def list_sites() -> list[str]:
    """Names of all registered sites, sorted."""
    return sorted(_site_entry_points())


def instantiate_site(entry_point: EntryPoint) -> object:
    """The validated site object of one entry point; SitePluginError names it on any failure."""
    label = f"{entry_point.name!r} ({entry_point.value})"
    try:
        factory: Callable[[], object] = entry_point.load()
    except Exception as error:  # a plugin's import can fail in any way; report which one
        raise SitePluginError(f"site plugin {label}: cannot be imported: {type(error).__name__}: {error}") from error
    if not callable(factory):
        raise SitePluginError(f"site plugin {label}: {entry_point.value} is not callable")
    try:
        site = factory()
    except SitePluginError as error:
        raise SitePluginError(f"site plugin {label}: {error}") from error
    except Exception as error:  # same: name the plugin whose constructor failed
        raise SitePluginError(f"site plugin {label}: cannot be created: {type(error).__name__}: {error}") from error
    validate_site(site, label)
    if site.name != entry_point.name:
        raise SitePluginError(f"site plugin {label}: its site calls itself {site.name!r}")
    return site


def load_site(name: str) -> Site:
    """The registered site called ``name``, validated."""
    registered = _site_entry_points()
    if name not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise SitePluginError(f"no site plugin named {name!r}; registered: {known}")
    return instantiate_site(registered[name])  # type: ignore[return-value]


def _environment_with_hostname(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    """os.environ with HOSTNAME filled in when the shell did not export it."""
    if environ is not None:
        return environ
    return {"HOSTNAME": node_name(), **os.environ}


def detected_sites(environ: Mapping[str, str]) -> list[Site]:
    """Every registered site whose ``detect`` matches ``environ``, in name order. A broken plugin is skipped
    with a warning: it must not keep the pilot from running where it is not even the site."""
    registered = _site_entry_points()  # one scan of the installed distributions, not one per site
    return [site for name in sorted(registered) if (site := _detecting(registered[name], environ))]


def _detecting(entry_point: EntryPoint, environ: Mapping[str, str]) -> Site | None:
    try:
        site = instantiate_site(entry_point)
        return site if site.detect(environ) else None
    except Exception as error:  # a plugin's detect can fail in any way; name it and go on
        log.warning("site plugin %r skipped in detection: %s", entry_point.name, error)
        return None


def select_site(name: str | None = None, environ: Mapping[str, str] | None = None) -> Site:
    """Explicit ``name``; else the first site detecting ``environ``; else generic."""
    if name:
        return load_site(name)
    environ = _environment_with_hostname(environ)
    matching = detected_sites(environ)
    if matching:
        log.info("site %s detected from the environment", matching[0].name)
        return matching[0]
    return load_site(GENERIC_SITE)


def sites_report(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per registered site for ``hpcpilot sites``; '*' marks the one chosen here."""
    environ = _environment_with_hostname(environ)
    chosen = _chosen_name(environ)
    lines = []
    for name in list_sites():
        try:
            description = load_site(name).describe()
        except SitePluginError as error:
            description = f"BROKEN: {error}"
        marker = "*" if name == chosen else " "
        lines.append(f"{marker} {name:<10} {description}")
    return lines


def _chosen_name(environ: Mapping[str, str]) -> str | None:
    try:
        return select_site(None, environ).name
    except SitePluginError:
        return None


def run_sites(args: argparse.Namespace) -> int:
    """``hpcpilot sites``: print one line per site; '*' marks the one that matches here."""
    try:
        lines = sites_report()
    except SitePluginError as error:  # e.g. two packages registering one name: no site can be told apart
        print(f"hpcpilot sites: {error}", file=sys.stderr)
        return ExitCode.GENERAL
    for line in lines:
        print(line)
    return 0

