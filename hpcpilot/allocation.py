"""RAM per core of what this process's allocation gives it, for the memory limit of a job without minRamCount.

On a shared node (Slurm --mem or --mem-per-cpu, a cgroup memory limit) the whole machine's memory is far above
what the allocation may use: a payload limited by the machine's figure grows past the allocation and the
kernel's OOM killer ends it, or the pilot, before the pilot's own 1235. So each memory ceiling is read here,
one function per figure, and ``allocation_memory_per_core`` chooses among them. An unreadable or absent
figure means no ceiling from that source, never an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .mounts import PROC_SELF, read_mounts

MB = 1024 * 1024
# cgroup v1 writes "no limit" as the largest page counter in bytes (2**63 rounded down to a page).
CGROUP_V1_UNLIMITED = 2 ** 62


@dataclass(frozen=True)
class CoreMemory:
    """RAM per core: what each core a job runs on is allowed, for the memory limit of a job without minRamCount
    (monitor.py). A :class:`MemoryCeiling` over the allocation's CPUs, or the machine's or a site's memory over
    its cores. ``origin`` says how it was worked out (the log explaining a payload's memory limit says it);
    ``brief``, a few words, goes into the 1235 diagnostic (empty: ``origin`` goes there instead)."""

    mb: float
    origin: str
    brief: str = ""


@dataclass(frozen=True)
class MemoryCeiling:
    """The memory the whole allocation may use on this node, as one source (a cgroup, Slurm) states it: a total
    for all its processes, not per core. Only ``allocation_memory_per_core`` uses it, dividing the smallest by
    the allocation's CPUs into a :class:`CoreMemory`; a type of its own, with the same fields, so that a total
    is never taken for a per-core figure. ``brief`` names the source alone."""

    mb: float
    origin: str
    brief: str


def machine_memory_mb() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MB


def machine_memory_per_core() -> CoreMemory:
    """This machine's physical memory over all its CPUs (not the ones this process is bound to: under an MPI
    launcher's binding that is one rank's share, and every core would seem to have the whole node's RAM)."""
    memory, cpus = machine_memory_mb(), os.cpu_count() or 1
    return CoreMemory(memory / cpus, f"this machine: {memory} MB / {cpus} CPUs", "this machine")


def allocation_cpus(environ: Mapping[str, str]) -> tuple[int, str]:
    """The CPUs the allocation's memory is for, and where the count comes from: Slurm's CPUs of the job on
    this node (its --mem and cgroup cover every rank there, whatever CPUs one rank is bound to), else the
    CPUs this process may run on."""
    slurm = _positive_int(environ.get("SLURM_CPUS_ON_NODE"))
    if slurm:
        return slurm, "SLURM_CPUS_ON_NODE"
    return len(os.sched_getaffinity(0)), "affinity"


def slurm_memory_ceiling(environ: Mapping[str, str], cpus: int) -> MemoryCeiling | None:
    """What Slurm gave the job on this node: SLURM_MEM_PER_CPU (MB) x its CPUs, or SLURM_MEM_PER_NODE (MB)."""
    per_cpu = _positive_int(environ.get("SLURM_MEM_PER_CPU"))
    if per_cpu:
        return MemoryCeiling(per_cpu * cpus, f"SLURM_MEM_PER_CPU {per_cpu} MB x {cpus} CPUs", "SLURM_MEM_PER_CPU")
    per_node = _positive_int(environ.get("SLURM_MEM_PER_NODE"))
    if per_node:
        return MemoryCeiling(per_node, f"SLURM_MEM_PER_NODE {per_node} MB", "SLURM_MEM_PER_NODE")
    return None


def cgroup_memory_ceiling(proc: Path = PROC_SELF) -> MemoryCeiling | None:
    """The smallest memory limit on this process's cgroup and its ancestors, as far up as they are visible
    (a parent's limit binds its children too): cgroup v2 memory.max, v1 memory.limit_in_bytes."""
    limits = []
    for directory, top, limit_file in _memory_cgroup_dirs(proc):
        for level in _up_to(directory, top):
            limit = _limit_bytes(level / limit_file)
            if limit is not None:
                origin = f"cgroup {limit_file}"
                limits.append(MemoryCeiling(limit / MB, f"{origin} {limit // MB} MB", origin))
    return min(limits, key=lambda ceiling: ceiling.mb, default=None)


def allocation_memory_per_core(environ: Mapping[str, str] | None = None, proc: Path = PROC_SELF) -> CoreMemory:
    """RAM per core when the site does not state its nodes: the smallest ceiling below the machine's memory
    (the cgroup's limit, Slurm's) over the allocation's CPUs; with none, the machine's memory over all its CPUs."""
    environ = os.environ if environ is None else environ
    cpus, cpus_origin = allocation_cpus(environ)
    machine = machine_memory_mb()
    ceilings = [ceiling for ceiling in (cgroup_memory_ceiling(proc), slurm_memory_ceiling(environ, cpus))
                if ceiling is not None and ceiling.mb < machine]
    if not ceilings:
        return machine_memory_per_core()
    smallest = min(ceilings, key=lambda ceiling: ceiling.mb)
    return CoreMemory(smallest.mb / cpus, f"{smallest.origin} / {cpus} CPUs ({cpus_origin})", smallest.brief)


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text else 0
    except ValueError:
        return None
    return value if value > 0 else None


def _limit_bytes(path: Path) -> int | None:
    """A cgroup memory limit in bytes; None for "max", the v1 unlimited value, or no readable file."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    value = int(text) if text.isdigit() else 0
    return value if 0 < value < CGROUP_V1_UNLIMITED else None


def _up_to(directory: Path, top: Path) -> list[Path]:
    """``directory`` and its parents up to ``top``, the highest one this mount shows."""
    levels = [directory]
    while levels[-1] != top and levels[-1] != levels[-1].parent:
        levels.append(levels[-1].parent)
    return levels


def _memory_cgroup_dirs(proc: Path) -> list[tuple[Path, Path, str]]:
    """(this process's memory cgroup directory, the top of its mount, the limit file's name) for each
    hierarchy that has one: the v1 memory controller's and the v2 unified one."""
    found = []
    for mount in read_mounts(proc):
        if mount.fstype == "cgroup2":
            controller, limit_file = "", "memory.max"
        elif mount.fstype == "cgroup" and "memory" in mount.super_options.split(","):
            controller, limit_file = "memory", "memory.limit_in_bytes"
        else:
            continue
        path = _own_cgroup_path(proc, controller)
        inside = _inside(path, mount.root) if path is not None else None
        if inside is not None:
            found.append((Path(mount.point, inside), Path(mount.point), limit_file))
    return found


def _own_cgroup_path(proc: Path, controller: str) -> str | None:
    """This process's cgroup path in the hierarchy of ``controller`` ("" is the v2 unified one)."""
    for line in _read_lines(proc / "cgroup"):
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if (controller in controllers.split(",")) if controller else controllers == "":
            return path
    return None


def _inside(path: str, root: str) -> str | None:
    """``path`` relative to the mount's ``root`` ("" for root itself); None when the mount does not show it."""
    relative = os.path.relpath(path, root)
    if relative == ".":
        return ""
    return None if relative.startswith("..") else relative


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
