"""BNL SDCC Slurm clusters: srun (or mpirun); the facts live in site.yaml beside this file."""
from hpcpilot.sites import Site


class BnlSite(Site):
    """BNL: every hook's generic default, driven by site.yaml."""
