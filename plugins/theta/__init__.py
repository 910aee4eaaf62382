"""Theta (ALCF, Cray XC40, KNL): Cobalt with aprun; the facts live in site.yaml beside this file."""
from hpcpilot.sites import Site


class ThetaSite(Site):
    """Theta: every hook's generic default, driven by site.yaml."""
