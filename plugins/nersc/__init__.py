"""NERSC (Perlmutter, formerly Cori): Slurm with srun; the facts live in site.yaml beside this file."""
from hpcpilot.sites import Site


class NerscSite(Site):
    """NERSC: every hook's generic default, driven by site.yaml."""
