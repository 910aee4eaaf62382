"""Which memory limit a payload gets, and why: limits.memory_limit_mb, else minRamCount x memory_grace, else
memory_grace x the site's RAM per core x the cores the job runs on (Pilot 3's rule, PROTOCOL.md 5)."""
from __future__ import annotations

import psutil
import pytest

from hpcpilot.accesspoint_writer import job_definition
from hpcpilot.allocation import CoreMemory
from hpcpilot.config import Limits
from hpcpilot.jobs import parse_job
from hpcpilot.jobstate import JobRun
from hpcpilot.monitor import Monitor
from hpcpilot.sites import load_site

SMALL_NODES = CoreMemory(50.0, "site small: 3200 MB / 64 cores per node", "site small")


def job(min_ram_mb: int = 0, core_count: int = 1, cores: int = 1) -> JobRun:
    """A job asking for ``core_count`` cores that runs on ``cores``."""
    spec = parse_job(job_definition(1, "true", minRamCount=min_ram_mb, coreCount=core_count))
    return JobRun(spec, 0, "node", cores)


def limit_of(run: JobRun, core_memory: CoreMemory | None = SMALL_NODES, **limits):
    return Monitor(Limits(**limits), kill=lambda run: None, core_memory=core_memory).memory_limit(run)


def test_a_job_without_min_ram_gets_grace_times_ram_per_core_times_its_cores():
    limit = limit_of(job(cores=4))
    assert limit.mb == 2 * 50 * 4
    assert "no minRamCount" in str(limit) and "site small" in str(limit) and "4 core(s)" in str(limit)


def test_the_cores_the_job_runs_on_count_not_those_it_asked_for():
    assert limit_of(job(core_count=8, cores=2)).mb == 2 * 50 * 2


def test_memory_grace_scales_the_per_core_limit():
    assert limit_of(job(cores=1), memory_grace=1.5).mb == 75


def test_min_ram_comes_before_ram_per_core():
    limit = limit_of(job(min_ram_mb=1000, cores=4))
    assert limit.mb == 2000 and "minRamCount 1000 MB x memory_grace 2" in str(limit)


def test_the_configured_limit_comes_before_min_ram_and_ram_per_core():
    limit = limit_of(job(min_ram_mb=1000, cores=4), memory_limit_mb=300)
    assert limit.mb == 300 and "limits.memory_limit_mb" in str(limit)


def test_without_a_figure_per_core_a_job_without_min_ram_has_no_limit():
    assert limit_of(job(cores=4), core_memory=None) is None


def test_memory_grace_zero_means_no_limit_rather_than_a_zero_one():
    assert limit_of(job(cores=4), memory_grace=0) is None
    assert limit_of(job(min_ram_mb=1000), memory_grace=0) is None


def test_a_plugin_site_limits_by_its_own_nodes():
    limit = limit_of(job(cores=4), core_memory=load_site("titan").memory_per_core())  # 32 GB / 16 cores
    assert limit.mb == 2 * 2048 * 4 and "site titan" in str(limit)


def test_the_generic_site_limits_by_this_machines_memory_per_cpu():
    limit = limit_of(job(cores=1), core_memory=load_site("generic").memory_per_core())
    machine_per_cpu = psutil.virtual_memory().total / (1024 * 1024) / psutil.cpu_count(logical=True)
    assert limit.mb == pytest.approx(2 * machine_per_cpu, rel=0.01)
    assert "this machine" in str(limit)


def test_the_diagnostic_brief_names_where_the_limit_comes_from_in_a_few_words():
    assert limit_of(job(cores=4)).brief == "RAM per core of site small"
    assert limit_of(job(min_ram_mb=1000)).brief == "minRamCount"
    assert limit_of(job(), memory_limit_mb=300).brief == "limits.memory_limit_mb"
    assert limit_of(job(), core_memory=CoreMemory(10.0, "a plugin's own figure")).brief == \
        "RAM per core of a plugin's own figure"
