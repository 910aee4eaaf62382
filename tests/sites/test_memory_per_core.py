"""RAM per core, the base of a job's memory limit when it has no minRamCount: the site's node figures, else
this machine's own."""
from __future__ import annotations

import os

import psutil
import pytest

from hpcpilot.sites import Site, SiteData, load_site, load_site_data


def machine_mb_per_cpu() -> float:
    return psutil.virtual_memory().total / (1024 * 1024) / psutil.cpu_count(logical=True)


def site_from_yaml(tmp_path, text: str) -> Site:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return Site(load_site_data(path))


def test_a_site_stating_its_nodes_gives_their_memory_over_their_cores(tmp_path):
    site = site_from_yaml(tmp_path, "name: small\ncores_per_node: 64\nmemory_per_node_mb: 3200\n")
    per_core = site.memory_per_core()
    assert per_core.mb == 50
    assert "site small" in per_core.origin and "3200 MB / 64 cores" in per_core.origin


def test_a_shipped_site_uses_its_own_figures_not_this_machine():
    per_core = load_site("titan").memory_per_core()  # 32 GB, 16 cores
    assert per_core.mb == 2048 and "titan" in per_core.origin


@pytest.mark.parametrize("figures", ["", "cores_per_node: 8\n", "memory_per_node_mb: 16000\n",
                                     "cores_per_node: 0\nmemory_per_node_mb: 16000\n"])
def test_a_site_without_both_node_figures_measures_this_machine(tmp_path, figures):
    site = site_from_yaml(tmp_path, "name: vague\n" + figures)
    per_core = site.memory_per_core()
    assert per_core.mb == pytest.approx(machine_mb_per_cpu(), rel=0.01)
    assert "this machine" in per_core.origin


def test_a_site_without_node_figures_keeps_the_placeholders_for_batch_scripts():
    site = Site(SiteData(name="tiny"))
    assert (site.cores_per_node(), site.memory_per_node_mb()) == (1, 2048)


def test_generic_measures_every_cpu_of_the_machine_even_when_bound_to_one():
    """A launcher binding the rank to one CPU must not give that CPU the whole node's memory."""
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(own)})
    try:
        generic = load_site("generic")
        per_core = generic.memory_per_core()
        bound_cores = generic.cores_per_node()
    finally:
        os.sched_setaffinity(0, own)
    assert bound_cores == 1
    assert per_core.mb == pytest.approx(machine_mb_per_cpu(), rel=0.01)
    assert "this machine" in per_core.origin
