"""Harvester templates: rendered by str.format_map with a dict like Harvester's, then bash -n."""
from __future__ import annotations

import math

import pytest

from hpcpilot.batchscript import BatchScriptError, check_template, render_batch_script
from hpcpilot.sites import Site, SiteData, list_sites, load_site

from .conftest import bash_syntax_error


class HarvesterPlaceholders(dict):
    """Harvester leaves placeholders it does not know as they are."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def harvester_dict(n_core_total: int, n_core_per_node: int, walltime: int, access_point: str) -> dict:
    """The values Harvester's submitters compute for one worker (node count rounded up)."""
    n_node = math.ceil(n_core_total / n_core_per_node)
    return HarvesterPlaceholders({
        "nCorePerNode": n_core_per_node, "nCoreTotal": n_core_total, "nNode": n_node,
        "requestRam": 2000 * n_core_total, "requestRamPerCore": 2000, "requestDisk": 1,
        "requestWalltime": walltime, "requestWalltimeMinute": math.ceil(walltime / 60),
        "accessPoint": access_point, "workerID": 4242, "harvesterID": "harvester-test",
        "computingSite": "TEST_SITE", "pandaQueueName": "TEST_QUEUE", "localQueueName": "regular",
        "logDir": "/var/log/harvester", "logSubDir": "/var/log/harvester/24-01-01_00",
    })


@pytest.mark.parametrize("name", list_sites())
def test_template_filled_by_harvester_equals_the_directly_rendered_script(name, tmp_path):
    site = load_site(name)
    access_point = "/shared/harvester/4242"
    cores_per_node = site.cores_per_node()
    template = render_batch_script(site, None, None, None, harvester_template=True)
    filled = template.format_map(harvester_dict(3 * cores_per_node, cores_per_node, 5400, access_point))
    assert filled == render_batch_script(site, 3, "01:30:00", access_point)
    assert bash_syntax_error(filled, tmp_path) == ""


@pytest.mark.parametrize("name", list_sites())
def test_template_keeps_harvester_placeholders_unfilled(name):
    template = render_batch_script(load_site(name), None, None, None, harvester_template=True)
    assert "{nNode}" in template and "{accessPoint}" in template and "{nCorePerNode}" in template


def test_braces_in_site_pieces_survive_harvester_format_map(tmp_path):
    shipped = load_site("bnl").data
    site = Site(SiteData(
        name="braces", scheduler="slurm", cores_per_node=8, plugin_dir=shipped.plugin_dir,
        batch_template=shipped.batch_template,
        batch_setup_lines=("export PILOT_HOME=${HOME}/pilot", "for f in a b; do :; done"),
        launcher="srun --ntasks=${RANKS}",
    ))
    template = render_batch_script(site, None, None, None, harvester_template=True,
                                   extra_args=["--label={x}"], extra_directives=["--comment={y}"])
    filled = template.format_map(harvester_dict(16, 8, 600, "/shared/ap"))
    assert "export PILOT_HOME=${HOME}/pilot" in filled
    assert "exec srun --ntasks=${RANKS} hpcpilot run" in filled
    assert "'--label={x}'" in filled and "#SBATCH --comment={y}" in filled
    assert bash_syntax_error(filled, tmp_path) == ""


def test_template_with_literal_braces_is_refused():
    with pytest.raises(BatchScriptError, match="literal braces"):
        check_template("f() { :; }; echo {nNode}", "test template")
    with pytest.raises(BatchScriptError, match="unknown placeholder.*HOME"):
        check_template("echo ${HOME} {nNode}", "test template")


def test_shipped_templates_hold_only_known_placeholders():
    for name in list_sites():
        check_template(load_site(name).batch_template(), name)
