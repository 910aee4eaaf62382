"""Configuration (hpcpilot.config): defaults < YAML < HPCPILOT_* environment < command line."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from hpcpilot.config import Config, ConfigError, HarvesterFiles, environment_overrides, load_config


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def config_error(**kwargs) -> str:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as caught:
        load_config(**kwargs)
    return str(caught.value)


# -- defaults and the protocol file names ---------------------------------------------------


def test_without_any_source_the_defaults_apply():
    assert load_config(environ={}) == Config()


def test_default_file_names_are_those_of_the_protocol():
    files = Config().files
    assert (files.worker_pandaids, files.job_spec, files.job_spec_format) == (
        "worker_pandaids.json", "HPCJobs.json", "json")
    assert (files.worker_attributes, files.job_report, files.event_status) == (
        "worker_attributes.json", "jobReport.json", "event_status.dump.json")
    assert (files.heartbeat, files.kill_worker, files.request_jobs, files.request_events, files.event_ranges) == (
        "worker_heartbeat.json", "kill_worker.json", "worker_requestjob.json", "worker_requestevents.json",
        "JobsEventRanges.json")
    assert files.pool_file_catalog == "PoolFileCatalog_H.xml"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().stagein_mode = "link"  # type: ignore[misc]


# -- priority --------------------------------------------------------------------------------


def test_each_source_overrides_the_one_below(tmp_path):
    yaml_path = yaml_file(tmp_path, "stagein_mode: link\nsite_name: from-yaml\nlog_level: WARNING\n"
                                    "cores_per_rank: 2\n")
    environ = {"HPCPILOT_SITE_NAME": "from-env", "HPCPILOT_LOG_LEVEL": "ERROR", "HPCPILOT_CORES_PER_RANK": "4"}
    config = load_config(yaml_path, environ, cli={"cores_per_rank": 8})
    assert config.progress_interval == Config().progress_interval  # default
    assert config.stagein_mode == "link"  # YAML over default
    assert (config.site_name, config.log_level) == ("from-env", "ERROR")  # environment over YAML
    assert config.cores_per_rank == 8  # command line over environment


def test_a_none_on_the_command_line_means_not_given():
    config = load_config(environ={"HPCPILOT_CORES_PER_RANK": "4"}, cli={"cores_per_rank": None, "site_name": None})
    assert config.cores_per_rank == 4
    assert config.site_name == ""


def test_the_yaml_file_may_come_from_hpcpilot_config(tmp_path):
    path = yaml_file(tmp_path, "site_name: titan\n")
    assert load_config(environ={"HPCPILOT_CONFIG": str(path)}).site_name == "titan"


def test_an_explicit_yaml_file_wins_over_hpcpilot_config(tmp_path):
    explicit = yaml_file(tmp_path, "site_name: explicit\n")
    other = tmp_path / "other.yaml"
    other.write_text("site_name: other\n")
    assert load_config(explicit, environ={"HPCPILOT_CONFIG": str(other)}).site_name == "explicit"


def test_a_base_config_sits_below_every_source(tmp_path):
    base = Config(site_name="nersc", stagein_mode="link")
    assert load_config(environ={}, base=base) == base
    assert load_config(environ={"HPCPILOT_SITE_NAME": "bnl"}, base=base) == Config(site_name="bnl", stagein_mode="link")


# -- sections and nesting ---------------------------------------------------------------------


def test_nested_environment_variables_reach_the_files_section():
    environ = {"HPCPILOT_FILES__JOB_SPEC": "pandaJobData.out", "HPCPILOT_FILES__JOB_SPEC_FORMAT": "cgi"}
    files = load_config(environ=environ).files
    assert (files.job_spec, files.job_spec_format) == ("pandaJobData.out", "cgi")
    assert files.worker_pandaids == HarvesterFiles().worker_pandaids  # the rest keeps its defaults


def test_environment_overrides_nest_on_double_underscores():
    assert environment_overrides({"HPCPILOT_FILES__JOB_SPEC": "x", "HPCPILOT_CORES_PER_RANK": "2",
                                  "OTHER": "y"}) == {"files": {"job_spec": "x"}, "cores_per_rank": "2"}


def test_a_yaml_section_changes_only_what_it_names(tmp_path):
    path = yaml_file(tmp_path, "files:\n  job_spec: pandaJobData.out\n  event_status: es.json\n")
    files = load_config(path, environ={"HPCPILOT_FILES__EVENT_STATUS": "env.json"}).files
    assert (files.job_spec, files.event_status, files.heartbeat) == ("pandaJobData.out", "env.json",
                                                                     "worker_heartbeat.json")


def test_a_command_line_section_overrides_the_environment():
    config = load_config(environ={"HPCPILOT_FILES__JOB_SPEC": "env.out"}, cli={"files": {"job_spec": "cli.out"}})
    assert config.files.job_spec == "cli.out"


def test_variables_the_pilot_sets_for_payloads_are_not_settings(tmp_path):
    """A payload may start a pilot of its own: what its environment carries must not be refused as settings."""
    environ = {name: "x" for name in ("HPCPILOT_RANK", "HPCPILOT_EVENT_CHANNEL", "HPCPILOT_JOB_DIR",
                                      "HPCPILOT_JOB_TOKEN")}
    assert load_config(environ=environ) == Config()


def test_hpcpilot_scratch_is_the_scratch_setting():
    """Also in a payload's environment, where it names the job's scratch: a pilot it starts goes below it."""
    assert load_config(environ={"HPCPILOT_SCRATCH": "/local/ssd"}).scratch == Path("/local/ssd")


@pytest.mark.parametrize("setting, value", [("JOB_SPEC", ""), ("SUMMARY", "/etc/x"), ("WORKER_ATTRIBUTES", ".."),
                                            ("JOB_REPORT", "sub/jobReport.json"), ("EVENT_STATUS", "jobReport.json")])
def test_a_file_name_setting_must_be_one_name_of_its_own(setting, value):
    with pytest.raises(ConfigError, match=r"files"):
        load_config(environ={f"HPCPILOT_FILES__{setting}": value})


# -- conversions ------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [("1", True), ("yes", True), ("TRUE", True), ("on", True),
                                            ("0", False), ("no", False), ("False", False), ("off", False)])
def test_yes_no_words_from_the_environment(text, expected):
    assert load_config(environ={"HPCPILOT_KEEP_SCRATCH": text}).keep_scratch is expected


def test_strings_from_the_environment_become_typed_values():
    environ = {"HPCPILOT_ACCESS_POINT": "/gpfs/ap/1", "HPCPILOT_CORES_PER_RANK": "16",
               "HPCPILOT_PROGRESS_INTERVAL": "2.5"}
    config = load_config(environ=environ)
    assert config.access_point == Path("/gpfs/ap/1") and isinstance(config.access_point, Path)
    assert config.cores_per_rank == 16
    assert config.progress_interval == 2.5


def test_yaml_values_keep_their_types(tmp_path):
    path = yaml_file(tmp_path, "keep_scratch: true\nprogress_interval: 5\nscratch: /dev/shm\n")
    config = load_config(path, environ={})
    assert config.keep_scratch is True
    assert config.progress_interval == 5.0
    assert config.scratch == Path("/dev/shm")


# -- bad values and unknown settings ------------------------------------------------------------


@pytest.mark.parametrize("variable, value, setting", [
    ("HPCPILOT_CORES_PER_RANK", "many", "cores_per_rank"),
    ("HPCPILOT_CORES_PER_RANK", "0", "cores_per_rank"),
    ("HPCPILOT_CORES_PER_RANK", "-2", "cores_per_rank"),
    ("HPCPILOT_KEEP_SCRATCH", "maybe", "keep_scratch"),
    ("HPCPILOT_PROGRESS_INTERVAL", "soon", "progress_interval"),
    ("HPCPILOT_PROGRESS_INTERVAL", "0", "progress_interval"),
    ("HPCPILOT_PROGRESS_INTERVAL", "-1", "progress_interval"),
    ("HPCPILOT_STAGEIN_MODE", "teleport", "stagein_mode"),
    ("HPCPILOT_FILES__JOB_SPEC_FORMAT", "xml", "job_spec_format"),
    ("HPCPILOT_FILES", "HPCJobs.json", "files"),
    ("HPCPILOT_LIMITS__CHECK_INTERVAL", "nan", "limits.check_interval"),
    ("HPCPILOT_LIMITS__DISK_INTERVAL", "0", "limits.disk_interval"),
    ("HPCPILOT_LIMITS__KILL_GRACE", "-3", "limits.kill_grace"),
    ("HPCPILOT_LIMITS__MAX_STDOUT_MB", "-1", "limits.max_stdout_mb"),
    ("HPCPILOT_LIMITS__MAX_STDOUT_MB", "0", "limits.max_stdout_mb"),  # would fail every job (1106)
    ("HPCPILOT_LIMITS__LOOPING_LIMIT", "0", "limits.looping_limit"),  # would fail every job (1150)
    ("HPCPILOT_LIMITS__TRANSFER_TIMEOUT_BASE", "0", "limits.transfer_timeout_base"),  # a small file: 1151 at once
    ("HPCPILOT_LIMITS__TRANSFER_TIMEOUT_MAX", "0", "limits.transfer_timeout_max"),  # every file: 1151 at once
    ("HPCPILOT_LIMITS__TRANSFER_TIMEOUT_PER_MB", "-1", "limits.transfer_timeout_per_mb"),
    ("HPCPILOT_STOP_BOUND", "inf", "stop_bound"),
    ("HPCPILOT_LIMITS__CHECK_INTERVAL", "1e300", "limits.check_interval"),  # the monitor thread's wait overflowed
    ("HPCPILOT_PROGRESS_INTERVAL", "1e10", "progress_interval"),
    ("HPCPILOT_HEARTBEAT_INTERVAL", "0", "heartbeat_interval"),
])
def test_a_bad_value_is_a_config_error_naming_the_setting(variable, value, setting):
    assert setting in config_error(environ={variable: value})


@pytest.mark.parametrize("size, seconds", [(0, 400), (100 << 20, 500), (20000 << 20, 10800)])
def test_a_files_transfer_timeout_is_pilot_3s(size, seconds):
    """PROTOCOL.md, section 5: min(400 s + 1 s per MB, 3 h)."""
    assert Config().limits.transfer_timeout(size) == seconds


@pytest.mark.parametrize("cli, setting", [({"cores_per_rank": "x"}, "cores_per_rank"),
                                          ({"stagein_mode": "ftp"}, "stagein_mode"),
                                          ({"files": "x"}, "files")])
def test_a_bad_command_line_value_is_a_config_error(cli, setting):
    assert setting in config_error(cli=cli)


def test_a_bad_yaml_value_is_a_config_error(tmp_path):
    message = config_error(yaml_file=yaml_file(tmp_path, "cores_per_rank: [1, 2]\n"))
    assert "cores_per_rank" in message and "site.yaml" in message


@pytest.mark.parametrize("source", ["yaml", "environment", "cli", "nested environment", "nested yaml"])
def test_unknown_settings_are_rejected_by_name(tmp_path, source):
    kwargs = {
        "yaml": {"yaml_file": yaml_file(tmp_path, "cores_per_node: 4\n")},
        "environment": {"environ": {"HPCPILOT_CORES_PER_NODE": "4"}},
        "cli": {"cli": {"cores_per_node": 4}},
        "nested environment": {"environ": {"HPCPILOT_FILES__JOBSPEC": "x"}},
        "nested yaml": {"yaml_file": yaml_file(tmp_path, "files:\n  jobspec: x\n")},
    }[source]
    message = config_error(**kwargs)
    assert "cores_per_node" in message or "jobspec" in message
    assert "unknown setting" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "key: [unclosed\n", "a: b: c\n"])
def test_a_yaml_file_that_is_not_a_mapping_is_a_config_error(tmp_path, text):
    assert "site.yaml" in config_error(yaml_file=yaml_file(tmp_path, text))


def test_a_missing_yaml_file_is_a_config_error(tmp_path):
    assert "absent.yaml" in config_error(yaml_file=tmp_path / "absent.yaml")


def test_an_empty_yaml_file_means_defaults(tmp_path):
    assert load_config(yaml_file(tmp_path, ""), environ={}) == Config()


def test_a_null_for_a_required_setting_is_a_config_error(tmp_path):
    assert "progress_interval" in config_error(yaml_file=yaml_file(tmp_path, "progress_interval:\n"))


@pytest.mark.parametrize("source", ["environment", "yaml"])
def test_a_mapping_or_list_for_a_text_setting_is_a_config_error(tmp_path, source):
    if source == "environment":
        config_error(environ={"HPCPILOT_LOG_LEVEL__X": "1"})
    else:
        config_error(yaml_file=yaml_file(tmp_path, "site_name: [a, b]\n"))


@pytest.mark.parametrize("environ, setting", [
    ({"HPCPILOT_FILES": "x", "HPCPILOT_FILES__JOB_SPEC": "y"}, "files"),
    ({"HPCPILOT_LIMITS__KILL_GRACE": "1", "HPCPILOT_LIMITS__KILL_GRACE__X": "2"}, "kill_grace"),
], ids=["section-given-a-value-first", "setting-given-a-section"])
def test_a_variable_that_is_both_a_setting_and_a_section_is_a_config_error(environ, setting):
    """Whichever of the two variables the environment lists first, the pilot says what clashes (exit 65)."""
    assert setting in config_error(environ=environ)


@pytest.mark.parametrize("text, setting", [("lifetime: true\n", "lifetime"), ("stop_bound: yes\n", "stop_bound"),
                                           ("limits:\n  kill_grace: on\n", "kill_grace"),
                                           ("secret_keys: no\n", "secret_keys")])
def test_a_yes_no_yaml_value_for_a_number_or_text_setting_is_a_config_error(tmp_path, text, setting):
    """YAML reads yes/no/on/true as booleans: taken as the number 1 'lifetime: true' gave the pilot one second
    (no job started, exit 81), and 'secret_keys: no' redacted the word False."""
    assert setting in config_error(yaml_file=yaml_file(tmp_path, text))


@pytest.mark.parametrize("text, setting", [("site_name: 5\n", "site_name"), ("secret_keys: 010\n", "secret_keys"),
                                           ("files:\n  job_spec: 1.10\n", "job_spec"),
                                           ("site_name: 2024-01-01\n", "site_name"), ("scratch: 1\n", "scratch")])
def test_a_yaml_number_or_date_for_a_text_or_path_setting_is_a_config_error(tmp_path, text, setting):
    """YAML reads 010 as the number 8 and 1.10 as 1.1: taken as text, 'secret_keys: 010' redacted the field '8'
    and 'job_spec: 1.10' read jobs from the file '1.1', without a word. Quoted, each is the text typed."""
    message = config_error(yaml_file=yaml_file(tmp_path, text))
    assert setting in message and "quote it" in message
    quoted = re.sub(r": (.+)$", r": '\1'", text.rstrip("\n"))
    assert load_config(yaml_file(tmp_path, quoted), environ={}) is not None


def test_a_number_from_the_environment_is_the_text_typed():
    assert load_config(environ={"HPCPILOT_SECRET_KEYS": "010"}).secret_keys == "010"


@pytest.mark.parametrize("value", ["2.5", "true"])
def test_a_non_integer_yaml_value_for_an_integer_setting_is_a_config_error(tmp_path, value):
    config_error(yaml_file=yaml_file(tmp_path, f"cores_per_rank: {value}\n"))


@pytest.mark.parametrize("source", ["environment", "yaml"])
@pytest.mark.parametrize("setting", ["scratch", "access_point"])
def test_an_empty_path_is_a_config_error_not_the_current_directory(tmp_path, source, setting):
    """HPCPILOT_SCRATCH=$LOCAL_SSD with the variable unset put job scratch in the current directory: in a batch
    script the access point, on the shared filesystem, without a word."""
    if source == "environment":
        message = config_error(environ={f"HPCPILOT_{setting.upper()}": ""})
    else:
        message = config_error(yaml_file=yaml_file(tmp_path, f"{setting}: ''\n"))
    assert setting in message and "empty" in message


def test_an_unknown_log_level_is_a_config_error():
    assert "log_level" in config_error(environ={"HPCPILOT_LOG_LEVEL": "LOUD"})


@pytest.mark.parametrize("level", ["CRITICAL", "NOTSET"])
def test_the_config_offers_the_log_levels_the_command_line_offers(level):
    """logging knows more names than --log-level offered; a YAML or environment setting took them all."""
    message = config_error(environ={"HPCPILOT_LOG_LEVEL": level})
    assert "DEBUG, INFO, WARNING, ERROR" in message


def test_the_command_line_takes_a_log_level_in_any_case():
    from hpcpilot.cli import build_parser
    args = build_parser().parse_args(["run", "--access-point", "/x", "--log-level", "debug"])
    assert args.log_level == "DEBUG"
    assert load_config(environ={"HPCPILOT_LOG_LEVEL": "warning"}).log_level == "warning"


def test_a_progress_interval_of_nan_is_a_config_error():
    assert "progress_interval" in config_error(environ={"HPCPILOT_PROGRESS_INTERVAL": "nan"})


@pytest.mark.timeout(10)
def test_a_config_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "pilot.yaml"
    os.mkfifo(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(environ={"HPCPILOT_CONFIG": str(path)})
