"""The fallback site: no scheduler assumed, mpiexec, scratch in $TMPDIR or the system temp dir."""
import os

import psutil

from hpcpilot.sites import Site


class GenericSite(Site):
    """Generic: never detected (it is what remains); sizes are measured on this machine."""

    def cores_per_node(self) -> int:
        return len(os.sched_getaffinity(0))

    def memory_per_node_mb(self) -> int:
        return psutil.virtual_memory().total // (1024 * 1024)
