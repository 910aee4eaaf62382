"""RAM per core, the base of a job's memory limit when it has no minRamCount: the site's node figures, else
what this process's allocation gives (its cgroup's memory limit, Slurm's memory, over its CPUs), else this
machine's own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from hpcpilot.allocation import allocation_memory_per_core, cgroup_memory_ceiling
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


# A process that joins the cgroup given as its argument (if any) before it imports anything of hpcpilot, then
# prints the RAM per core it finds: as the generic site (no node figures), or as one stating its nodes.
FIGURE_IN_CHILD = """
import json, os, sys
if sys.argv[1]:
    with open(os.path.join(sys.argv[1], "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
from hpcpilot.sites import Site, SiteData
site = Site(SiteData(name="child", cores_per_node=int(sys.argv[2]), memory_per_node_mb=int(sys.argv[3])))
figure = site.memory_per_core()
print(json.dumps({"mb": figure.mb, "origin": figure.origin, "brief": figure.brief}))
"""


def figure_in_child(cgroup: Path | None = None, prefix: tuple[str, ...] = (), nodes: tuple[int, int] = (0, 0),
                    **slurm: str) -> dict:
    """RAM per core as a new process sees it: in ``cgroup``, under ``prefix`` (e.g. taskset), with only the
    Slurm variables given."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    result = subprocess.run([*prefix, sys.executable, "-c", FIGURE_IN_CHILD, str(cgroup or ""), *map(str, nodes)],
                            env={**env, **slurm}, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def affinity_cpus() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.timeout(60)
def test_a_cgroup_memory_limit_is_the_allocations_memory_over_its_cpus(memory_cgroup):
    figure = figure_in_child(memory_cgroup(300))
    assert figure["mb"] == pytest.approx(300 / affinity_cpus())
    assert f"cgroup memory.limit_in_bytes 300 MB / {affinity_cpus()} CPUs (affinity)" in figure["origin"]
    assert figure["brief"] == "cgroup memory.limit_in_bytes"


@pytest.mark.timeout(60)
def test_the_figure_follows_the_cgroups_limit(memory_cgroup):
    assert figure_in_child(memory_cgroup(200))["mb"] == pytest.approx(200 / affinity_cpus())
    assert figure_in_child(memory_cgroup(600))["mb"] == pytest.approx(600 / affinity_cpus())


@pytest.mark.timeout(60)
def test_a_limit_on_a_parent_cgroup_binds_a_child_cgroup_without_one(memory_cgroup):
    parent = memory_cgroup(400)
    figure = figure_in_child(memory_cgroup(None, parent=parent))
    assert figure["mb"] == pytest.approx(400 / affinity_cpus()) and "400 MB" in figure["origin"]


@pytest.mark.timeout(60)
def test_the_smallest_limit_up_the_hierarchy_counts(memory_cgroup):
    parent = memory_cgroup(400)
    assert "250 MB" in figure_in_child(memory_cgroup(250, parent=parent))["origin"]


@pytest.mark.timeout(60)
def test_a_process_bound_to_one_cpu_has_its_cgroups_whole_limit_for_that_cpu(memory_cgroup):
    figure = figure_in_child(memory_cgroup(300), prefix=("taskset", "-c", str(min(os.sched_getaffinity(0)))))
    assert figure["mb"] == pytest.approx(300) and "/ 1 CPUs (affinity)" in figure["origin"]


@pytest.mark.timeout(60)
def test_slurm_mem_per_cpu_is_the_ram_per_core():
    figure = figure_in_child(SLURM_MEM_PER_CPU="100")
    assert figure["mb"] == pytest.approx(100)
    assert figure["origin"].startswith("SLURM_MEM_PER_CPU 100 MB") and figure["brief"] == "SLURM_MEM_PER_CPU"


@pytest.mark.timeout(60)
def test_slurm_mem_per_node_is_shared_by_the_jobs_cpus_on_the_node_not_only_this_ranks():
    figure = figure_in_child(prefix=("taskset", "-c", str(min(os.sched_getaffinity(0)))),
                             SLURM_MEM_PER_NODE="400", SLURM_CPUS_ON_NODE="4")
    assert figure["mb"] == pytest.approx(100)
    assert figure["origin"] == "SLURM_MEM_PER_NODE 400 MB / 4 CPUs (SLURM_CPUS_ON_NODE)"


@pytest.mark.timeout(60)
def test_the_smallest_of_cgroup_and_slurm_counts(memory_cgroup):
    cgroup = memory_cgroup(300)
    assert "SLURM_MEM_PER_CPU" in figure_in_child(cgroup, SLURM_MEM_PER_CPU="50")["origin"]
    assert "cgroup" in figure_in_child(cgroup, SLURM_MEM_PER_CPU="1000")["origin"]


@pytest.mark.timeout(60)
def test_a_slurm_figure_above_the_machines_memory_leaves_the_machines_figure():
    figure = figure_in_child(SLURM_MEM_PER_NODE=str(int(psutil.virtual_memory().total / 2**20) + 1000))
    assert "this machine" in figure["origin"]


@pytest.mark.timeout(60)
def test_a_site_stating_its_nodes_wins_over_the_allocation(memory_cgroup):
    figure = figure_in_child(memory_cgroup(300), nodes=(64, 3200), SLURM_MEM_PER_CPU="10")
    assert figure["mb"] == 50 and figure["origin"].startswith("site child")


def proc_files(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    """A /proc/self stand-in: its cgroup and mountinfo files (for layouts this machine does not have)."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo.format(root=tmp_path))
    return proc


def test_cgroup_v2_memory_max_is_read_up_the_hierarchy_and_max_means_no_limit(tmp_path):
    step = tmp_path / "unified" / "job_7" / "step_0"
    step.mkdir(parents=True)
    (step / "memory.max").write_text("max\n")
    (step.parent / "memory.max").write_text(f"{4096 * 1024 * 1024}\n")
    proc = proc_files(tmp_path, "0::/job_7/step_0\n", "41 31 0:38 / {root}/unified rw,relatime - cgroup2 cgroup2 rw\n")
    ceiling = cgroup_memory_ceiling(proc)
    assert (ceiling.mb, ceiling.origin) == (4096, "cgroup memory.max 4096 MB")
    assert allocation_memory_per_core({}, proc).origin.startswith("cgroup memory.max 4096 MB / ")


def test_cgroup_v1_unlimited_and_absent_files_are_no_limit(tmp_path):
    own = tmp_path / "memory" / "job"
    own.mkdir(parents=True)
    (own / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    proc = proc_files(tmp_path, "4:memory:/job\n0::/\n",
                      "35 31 0:32 / {root}/memory rw - cgroup cgroup rw,memory\n"
                      "41 31 0:38 / {root}/absent rw - cgroup2 cgroup2 rw\n")
    assert cgroup_memory_ceiling(proc) is None
    assert cgroup_memory_ceiling(tmp_path / "no-such-proc") is None


def test_a_cgroup_mount_that_does_not_show_this_process_is_no_limit(tmp_path):
    other = tmp_path / "memory"
    other.mkdir()
    (other / "memory.limit_in_bytes").write_text(f"{100 * 1024 * 1024}\n")
    proc = proc_files(tmp_path, "4:memory:/elsewhere\n",
                      "35 31 0:32 /mine {root}/memory rw - cgroup cgroup rw,memory\n")
    assert cgroup_memory_ceiling(proc) is None
