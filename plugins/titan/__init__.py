"""Titan (OLCF, Cray XK7): PBS/Moab with aprun; the facts live in site.yaml beside this file."""
from hpcpilot.sites import Site


class TitanSite(Site):
    """Titan: every hook's generic default, driven by site.yaml."""
