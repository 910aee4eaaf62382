"""Every registered site honours the Site contract."""
from __future__ import annotations

import pytest

from hpcpilot.batchscript import render_batch_script
from hpcpilot.sites import GENERIC_SITE, HOOKS, SCHEDULERS, list_sites, load_site

from .conftest import FOUR_SITES, bash_syntax_error


def test_the_shipped_sites_are_registered():
    assert set(FOUR_SITES) | {GENERIC_SITE} <= set(list_sites())


def test_site_loads_with_every_hook_and_its_own_name(registered_site):
    for hook in HOOKS:
        assert callable(getattr(registered_site, hook)), hook
    assert registered_site.name in list_sites()
    assert registered_site.scheduler() in SCHEDULERS
    assert registered_site.cores_per_node() >= 1
    assert registered_site.memory_per_node_mb() >= 1
    assert registered_site.memory_per_core().mb > 0


def test_describe_is_one_line_naming_scheduler_and_launcher(registered_site):
    description = registered_site.describe()
    assert description and "\n" not in description
    assert registered_site.scheduler() in description
    assert registered_site.launcher_line().split()[0] in description


def test_site_detects_its_own_sample_environment(registered_site):
    if registered_site.name == GENERIC_SITE:
        pytest.skip("generic is the fallback: it never detects anything by design")
    assert registered_site.detect(registered_site.sample_environment())


def test_site_detects_no_other_sites_sample_environment(registered_site):
    for other in list_sites():
        if other != registered_site.name:
            assert not registered_site.detect(load_site(other).sample_environment()), other


def test_site_detects_nothing_in_an_empty_environment(registered_site):
    assert not registered_site.detect({})


def test_rendered_batch_script_passes_bash_syntax_check(registered_site, tmp_path):
    script = render_batch_script(registered_site, 3, "02:00:00", "/shared/ap/worker-7", ranks_per_node=1)
    assert bash_syntax_error(script, tmp_path) == ""
    assert f"--site {registered_site.name}" in script


def test_rendered_harvester_template_passes_bash_syntax_check_once_filled(registered_site, tmp_path):
    template = render_batch_script(registered_site, None, None, None, harvester_template=True)
    filled = template.format_map({"nNode": 2, "nCorePerNode": 8, "requestWalltime": 3600,
                                  "requestWalltimeMinute": 60, "accessPoint": "/shared/ap/w"})
    assert bash_syntax_error(filled, tmp_path) == ""


def test_payload_environment_gives_the_core_count(registered_site):
    environment = registered_site.payload_environment(8)
    assert environment["OMP_NUM_THREADS"] == "8"
    assert environment["ATHENA_PROC_NUMBER"] == "8"
    assert "ATHENA_PROC_NUMBER" not in registered_site.payload_environment(1)


def test_setup_lines_and_container_runtimes_are_lists_of_strings(registered_site):
    assert all(isinstance(line, str) for line in registered_site.setup_lines())
    assert all(isinstance(name, str) for name in registered_site.container_runtimes())
