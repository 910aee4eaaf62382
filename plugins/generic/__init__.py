"""The fallback site: no scheduler assumed, mpiexec, scratch in $TMPDIR or the system temp dir."""
import os

from hpcpilot.allocation import machine_memory_mb
from hpcpilot.sites import Site


class GenericSite(Site):
    """Generic: never detected (it is what remains); sizes are measured on this machine (its site.yaml states
    none, so its RAM per core is what this process's allocation gives, else this machine's)."""

    def cores_per_node(self) -> int:
        return len(os.sched_getaffinity(0))

    def memory_per_node_mb(self) -> int:
        return machine_memory_mb()
