"""Typed configuration: defaults < YAML file < HPCPILOT_* environment < command line.

The settings and their defaults are the fields of ``Config`` and of its
sections ``files`` (``HarvesterFiles``) and ``limits`` (``Limits``). The
YAML file is the one ``--config`` or ``$HPCPILOT_CONFIG`` names.
Top-level settings map to ``HPCPILOT_<NAME>``; settings of a section map to
``HPCPILOT_<SECTION>__<NAME>`` (two underscores), e.g.
``HPCPILOT_FILES__JOB_SPEC=pandaJobData.out``. An unknown setting, in the
file or the environment, is a ConfigError naming the known ones; the
variables the pilot sets for its payloads (``_NOT_SETTINGS``) are not read.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from .atomicfile import read_bytes
from .staging import STAGEIN_MODES

ENV_PREFIX = "HPCPILOT_"
SPEC_FORMATS = ("json", "cgi")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # the same choice for --log-level, YAML and environment


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class HarvesterFiles:
    """Names of the files Harvester and the pilot exchange (shared/PROTOCOL.md)."""

    worker_pandaids: str = "worker_pandaids.json"
    job_spec: str = "HPCJobs.json"
    job_spec_format: str = "json"
    worker_attributes: str = "worker_attributes.json"
    job_report: str = "jobReport.json"
    event_status: str = "event_status.dump.json"
    heartbeat: str = "worker_heartbeat.json"
    kill_worker: str = "kill_worker.json"
    request_jobs: str = "worker_requestjob.json"  # never written (no pull mode): reserved, no other file may take it
    request_events: str = "worker_requestevents.json"
    event_ranges: str = "JobsEventRanges.json"
    update_events: str = "worker_updateevents.json"  # Harvester's own, in each job directory (its updateEventsFile)
    pool_file_catalog: str = "PoolFileCatalog_H.xml"
    summary: str = "hpcpilot_summary.json"
    state_dir: str = ".hpcpilot"
    pending_declarations: str = ".hpcpilot-pending.json"  # in each job directory: staged dump entries
    received_ranges: str = ".hpcpilot-ranges.jsonl"  # in an event service job's directory: ranges received
    stop_file: str = "hpcpilot_stop"  # its existence asks the pilot for a graceful stop


@dataclass(frozen=True)
class Limits:
    """Payload monitoring: limits and how often each is checked (seconds unless named)."""

    check_interval: float = 5.0  # walltime, and how often the monitor wakes at all
    memory_interval: float = 60.0
    disk_interval: float = 60.0
    looping_interval: float = 900.0
    walltime_default: int | None = None  # for jobs without maxWalltime; None: no limit
    kill_grace: float = 10.0  # SIGTERM to SIGKILL
    # A payload's PSS limit: memory_limit_mb; else minRamCount x memory_grace; else, for a job without
    # minRamCount, memory_grace x the site's RAM per core x the job's cores (Monitor.memory_limit).
    memory_grace: float = 2.0  # 0: no limit from minRamCount or RAM per core
    memory_limit_mb: int | None = None  # one limit for every payload, before both; None or 0: none
    looping_limit: float = 7200.0  # no file in scratch modified for this long
    min_free_space_mb: int = 1024
    max_stdout_mb: int = 2048
    # One file's stage-in or stage-out may take base + per_mb x its MB, at most max (Pilot 3's, PROTOCOL.md 5).
    transfer_timeout_base: float = 400.0
    transfer_timeout_per_mb: float = 1.0
    transfer_timeout_max: float = 10800.0

    def transfer_timeout(self, size: int) -> float:
        """The seconds a file of ``size`` bytes may take to stage in or out (MB as in the other limits: MiB)."""
        return min(self.transfer_timeout_base + self.transfer_timeout_per_mb * size / (1 << 20),
                   self.transfer_timeout_max)


@dataclass(frozen=True)
class Config:
    access_point: Path | None = None
    scratch: Path | None = None
    cores_per_rank: int | None = None
    keep_scratch: bool = False
    log_level: str = "INFO"
    progress_interval: float = 30.0
    stagein_mode: str = "copy"
    site_name: str = ""
    lifetime: float | None = None  # seconds from start; the batch system's end time also counts
    lifetime_margin: float = 180.0  # stop this long before the end
    stop_bound: float = 45.0  # a graceful stop's own waits: a third each for payloads' ends and hung stage-ins
    heartbeat_interval: float = 60.0
    declare_running_after: float = 60.0  # a payload running this long is declared running (0: at its start)
    final_flush_wait: float = 10.0  # at the end, how long to wait for Harvester to take a dump not the pilot's
    rank_silence_limit: float = 600.0  # a rank not heard from for this long (dead, hung) ends the pilot; 0: never
    startup_limit: float = 1800.0  # reading the job definitions longer than this (a hung filesystem) ends it; 0: never
    event_wait_timeout: float = 600.0  # event service: give up waiting for Harvester's ranges after this
    payload_restarts: int = 3  # event service: restarts of a crashed payload per rank
    exec_plain_commands: bool = True  # a payload line of plain words is exec'd as bash would, without bash
    secret_keys: str = ""  # comma-separated job fields whose values are redacted, besides pilotSecrets and secrets
    files: HarvesterFiles = field(default_factory=HarvesterFiles)
    limits: Limits = field(default_factory=Limits)

    @property
    def stop_wait(self) -> float:
        """What a graceful stop gives each of its own waits (payloads' ends, hung stage-ins): a third of
        stop_bound."""
        return self.stop_bound / 3

    def validated(self) -> "Config":
        if self.stagein_mode not in STAGEIN_MODES:
            raise ConfigError(f"stagein_mode {self.stagein_mode!r}: choose one of {', '.join(STAGEIN_MODES)}")
        if self.files.job_spec_format not in SPEC_FORMATS:
            raise ConfigError(f"files.job_spec_format {self.files.job_spec_format!r}: choose json or cgi")
        if self.cores_per_rank is not None and self.cores_per_rank < 1:
            raise ConfigError(f"cores_per_rank {self.cores_per_rank}: must be at least 1")
        if str(self.log_level).upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level {self.log_level!r}: choose one of {', '.join(LOG_LEVELS)}")
        _check_amounts("", self)
        _check_amounts("limits.", self.limits)
        _check_file_names(self.files)
        return self


def _check_file_names(files: HarvesterFiles) -> None:
    """Each file is one name inside a directory of the access point, and no two are the same file."""
    names = {item.name: getattr(files, item.name) for item in fields(files) if item.name != "job_spec_format"}
    for setting, name in names.items():
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise ConfigError(f"files.{setting} {name!r}: must be a file name, without '/' (not empty, '.' or '..')")
    shared = sorted({name for name in names.values() if list(names.values()).count(name) > 1})
    if shared:
        raise ConfigError(f"files: {', '.join(shared)} named for more than one file; each needs a name of its own")


# Limits that 0 would not turn off (as it does walltime_default or memory_limit_mb) but make fail every job.
POSITIVE_LIMITS = frozenset({"looping_limit", "max_stdout_mb", "transfer_timeout_base", "transfer_timeout_max"})


def _check_amounts(prefix: str, settings: Any) -> None:
    """Every number is finite and not negative; every interval positive (0 would make a monitor spin), and
    the limits no job could keep at 0. ``not value >= 0`` also refuses NaN. The largest a thread can wait
    (threading.TIMEOUT_MAX, 292 years) bounds them all: a longer wait raises OverflowError in the thread
    that waits, and limits.check_interval is the monitor thread's wait."""
    for item in fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        positive = item.name.endswith("_interval") or item.name in POSITIVE_LIMITS
        if not (value > 0 if positive else value >= 0) or value > threading.TIMEOUT_MAX:
            raise ConfigError(f"{prefix}{item.name} {value}: must be a finite number, "
                              f"{'greater than 0' if positive else 'not negative'}, "
                              f"at most {threading.TIMEOUT_MAX:.0f}")


def _base_type(hint: Any) -> type:
    """``int | None`` -> int; ``Path | None`` -> Path."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _convert(name: str, hint: Any, value: Any) -> Any:
    kind = _base_type(hint)
    if value is None:
        if kind is hint:  # not Optional
            raise ConfigError(f"{name}: needs a value")
        return None
    if isinstance(value, (Mapping, list, tuple)) or (isinstance(value, (bool, float)) and kind is int) or \
            (isinstance(value, bool) and kind is not bool):  # YAML's yes/on/true is no number, nor a text
        raise ConfigError(f"{name}: {value!r} is not a valid {kind.__name__}")
    if kind is Path and isinstance(value, str) and not value.strip():  # Path("") is the current directory
        raise ConfigError(f"{name}: empty; give a directory, or leave the setting out")
    if isinstance(value, kind):
        return value
    if kind in (str, Path) and not isinstance(value, str):  # YAML reads 010 as 8, 1.10 as 1.1: not what was typed
        raise ConfigError(f"{name}: {value!r} is not a valid {kind.__name__}: YAML read it as {type(value).__name__} "
                          "(quote it if it is meant as text)")
    if kind is bool:
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {value!r} is not a yes/no value")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a valid {kind.__name__}") from None


def _merge(settings: Any, overrides: Mapping[str, Any], where: str) -> Any:
    """A copy of the dataclass ``settings`` with ``overrides`` applied, type-checked."""
    hints = typing.get_type_hints(type(settings))
    known = {f.name for f in fields(settings)}
    changes = {}
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
        current = getattr(settings, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {key!r} must be a section (a mapping)")
            changes[key] = _merge(current, value, f"{where} {key}")
        else:
            changes[key] = _convert(f"{where} {key}", hints[key], value)
    return replace(settings, **changes)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(read_bytes(path)) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"config file {path}: {error}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top")
    return content


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``HPCPILOT_CORES_PER_RANK=4`` -> {"cores_per_rank": "4"}; ``A__B`` nests."""
    overrides: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name[len(ENV_PREFIX):] in _NOT_SETTINGS:
            continue
        *sections, key = name[len(ENV_PREFIX):].lower().split("__")
        target = overrides
        for section in sections:
            target = target.setdefault(section, {})
            if not isinstance(target, dict):  # HPCPILOT_FILES=x beside HPCPILOT_FILES__JOB_SPEC=y
                raise _section_and_value(name, section)
        if isinstance(target.get(key), dict):  # the same two, listed the other way round
            raise _section_and_value(name, key)
        target[key] = value
    return overrides


def _section_and_value(name: str, setting: str) -> ConfigError:
    return ConfigError(f"environment HPCPILOT_*: {setting!r} is given a value of its own and, by other variables, "
                       f"settings inside it ({name}); give one or the other")


# Variables the pilot sets for payloads and children, not settings. HPCPILOT_SCRATCH is both: a payload's
# working directory, and the scratch root of a pilot that such a payload would start.
_NOT_SETTINGS = {"RANK", "CONFIG", "EVENT_CHANNEL", "JOB_DIR", "JOB_TOKEN"}


def load_config(
    yaml_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
    base: Config | None = None,
) -> Config:
    """Build the Config in rising priority: base/defaults, YAML, environment, CLI."""
    environ = os.environ if environ is None else environ
    config = base or Config()
    yaml_file = yaml_file or environ.get(ENV_PREFIX + "CONFIG")
    if yaml_file:
        config = _merge(config, read_yaml(Path(yaml_file)), f"config file {yaml_file}")
    config = _merge(config, environment_overrides(environ), "environment HPCPILOT_*")
    config = _merge(config, {k: v for k, v in (cli or {}).items() if v is not None}, "command line")
    return config.validated()
