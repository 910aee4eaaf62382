"""Choosing a site, and plugins that are broken, found through real entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from hpcpilot.sites import (
    ENTRY_POINT_GROUP, GENERIC_SITE, Site, SiteData, SitePluginError, instantiate_site, load_site,
    load_site_data, select_site, sites_report, validate_site,
)

from .conftest import install_outside_plugin


def test_explicit_name_wins_over_detection():
    assert select_site("titan", {"NERSC_HOST": "perlmutter"}).name == "titan"


def test_detection_picks_the_matching_site():
    assert select_site(None, {"NERSC_HOST": "perlmutter"}).name == "nersc"
    assert select_site(None, {"HOSTNAME": "thetamom3"}).name == "theta"
    assert select_site(None, {"HOSTNAME": "nid03824", "COBALT_JOBID": "4711"}).name == "theta"  # aprun's ranks
    assert select_site(None, {"HOSTNAME": "titan-batch4"}).name == "titan"
    assert select_site(None, {"SLURM_SUBMIT_HOST": "icsubmit01.sdcc.bnl.gov"}).name == "bnl"


def test_unknown_environment_falls_back_to_generic():
    assert select_site(None, {"HOSTNAME": "laptop"}).name == GENERIC_SITE


def test_unknown_site_name_lists_the_registered_ones():
    with pytest.raises(SitePluginError, match=r"no site plugin named 'summit'.*nersc"):
        load_site("summit")


def test_sites_report_marks_exactly_the_site_matching_here():
    lines = sites_report({"NERSC_HOST": "cori"})
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and marked[0].split()[1] == "nersc"
    assert len(lines) >= 5


def test_plugin_that_cannot_be_imported_is_named_in_the_error():
    entry_point = EntryPoint(name="ghost", value="no_such_module_xyz:Site", group=ENTRY_POINT_GROUP)
    with pytest.raises(SitePluginError, match=r"site plugin 'ghost' \(no_such_module_xyz:Site\): cannot be imported"):
        instantiate_site(entry_point)


def test_object_lacking_hooks_is_rejected_with_the_missing_hooks_named():
    class HalfSite:
        name = "half"

        def detect(self, environ):
            return False

        def describe(self, verbose):  # wrong signature
            return "half"

    with pytest.raises(SitePluginError) as error:
        validate_site(HalfSite(), "'half'")
    message = str(error.value)
    assert "site plugin 'half'" in message
    assert "lacks hook choose_scratch(config_scratch, environ)" in message
    assert "hook describe cannot be called as describe()" in message


def test_site_yaml_with_an_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("name: x\nscratch:\n  candidate: [/tmp]\n")
    with pytest.raises(SitePluginError, match=r"site\.yaml: unknown key\(s\) scratch\.candidate"):
        load_site_data(path)


def test_site_yaml_with_a_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("name: x\ncores_per_node: many\n")
    with pytest.raises(SitePluginError, match=r"cores_per_node: expected a non-negative integer"):
        load_site_data(path)


def _run_python(code: str, pythonpath: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"})


@pytest.mark.timeout(120)
def test_outside_plugin_registers_and_is_detected(tmp_path):
    install_outside_plugin(
        tmp_path,
        """
        from hpcpilot.sites import Site

        class SummitSite(Site):
            pass
        """,
        "name: summit\nscheduler: none\ndetect:\n  any:\n    - {LMOD_SYSTEM_NAME: summit}\n",
    )
    result = _run_python(
        "from hpcpilot.sites import list_sites, select_site\n"
        "print('summit' in list_sites(), select_site(None, {'LMOD_SYSTEM_NAME': 'summit'}).name)",
        tmp_path,
    )
    assert result.stdout.split() == ["True", "summit"], result.stderr


@pytest.mark.timeout(120)
def test_outside_plugin_without_a_hook_fails_naming_plugin_and_hook(tmp_path):
    install_outside_plugin(
        tmp_path,
        """
        class SummitSite:
            name = "summit"

            def detect(self, environ):
                return True
        """,
        "name: summit\n",
    )
    result = _run_python("from hpcpilot.sites import select_site\nselect_site('summit')", tmp_path)
    assert result.returncode != 0
    assert "site plugin 'summit' (outside_site:SummitSite)" in result.stderr
    assert "lacks hook describe()" in result.stderr


@pytest.mark.timeout(120)
def test_a_broken_plugin_is_skipped_in_detection_with_a_warning(tmp_path):
    """A third-party plugin whose detect fails must not stop the pilot where it is not even the site."""
    install_outside_plugin(
        tmp_path,
        """
        from hpcpilot.sites import Site

        class SummitSite(Site):
            def detect(self, environ):
                raise KeyError("LMOD_SYSTEM_NAME")
        """,
        "name: summit\n",
    )
    result = _run_python("from hpcpilot.sites import select_site, sites_report\n"
                         "print(select_site(None, {'HOSTNAME': 'laptop'}).name)\n"
                         "print(*[line for line in sites_report({}) if line.startswith('*')])", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == ["generic", "*", "generic"]
    assert "site plugin 'summit' skipped in detection: 'LMOD_SYSTEM_NAME'" in result.stderr


def test_a_site_built_from_data_alone_uses_generic_defaults():
    site = validate_site(Site(SiteData(name="tiny")), "'tiny'")
    assert site.scheduler() == "none"
    assert site.container_runtimes() == []
    assert not site.detect({"HOSTNAME": "tiny"})


@pytest.mark.timeout(120)
def test_a_plugin_whose_batch_template_is_missing_gets_a_message_not_a_traceback(tmp_path):
    install_outside_plugin(
        tmp_path,
        """
        from hpcpilot.sites import Site

        class SummitSite(Site):
            pass
        """,
        "name: summit\nscheduler: none\nbatch:\n  template: batch.lsf.in\n",
    )
    repository = Path(__file__).resolve().parents[2]  # this checkout's hpcpilot, not an installed one
    result = subprocess.run(
        [sys.executable, "-m", "hpcpilot", "batch-script", "--site", "summit", "--nodes", "1", "--walltime",
         "01:00:00", "--access-point", "/ap"], capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(repository)]), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "site summit: batch template" in result.stderr and "batch.lsf.in" in result.stderr


@pytest.mark.timeout(120)
def test_the_sites_command_names_a_site_registered_twice_without_a_traceback(tmp_path):
    install_outside_plugin(tmp_path, "from hpcpilot.sites import Site\n\nclass SummitSite(Site):\n    pass\n",
                           "name: nersc\n")
    entry_points_file = tmp_path / "outside_site-1.0.dist-info" / "entry_points.txt"
    entry_points_file.write_text(entry_points_file.read_text().replace("summit =", "nersc ="))
    result = subprocess.run([sys.executable, "-m", "hpcpilot", "sites"], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 65 and "Traceback" not in result.stderr, result.stderr
    assert "site plugin 'nersc': registered twice" in result.stderr


@pytest.mark.parametrize("environment, problem", [
    ("{'A=B': x}", r"environment: 'A=B' cannot name an environment variable"),
    ("{'': x}", r"environment: '' cannot name an environment variable"),
    ("{A: null}", r"environment\.A: expected a string or a number, got None"),
    ("{A: yes}", r"environment\.A: expected a string or a number, got True"),
    ("{A: [1, 2]}", r"environment\.A: expected a string or a number, got \[1, 2\]"),
    ('{A: "x\\0y"}', r"environment\.A: a NUL character"),
])
def test_a_site_environment_no_payload_could_start_with_is_a_site_error(tmp_path, environment, problem):
    """It failed every job (1008, 'illegal environment variable name') or gave payloads 'None' and 'True'."""
    path = tmp_path / "site.yaml"
    path.write_text(f"name: x\nenvironment: {environment}\n")
    with pytest.raises(SitePluginError, match=problem):
        load_site_data(path)


def test_a_site_environment_of_strings_and_numbers_is_taken_as_text(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("name: x\nenvironment: {OMP_PROC_BIND: close, OMP_STACKSIZE: 512, RATIO: 0.5}\n")
    assert dict(load_site_data(path).environment) == {"OMP_PROC_BIND": "close", "OMP_STACKSIZE": "512", "RATIO": "0.5"}
