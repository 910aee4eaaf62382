"""hpcpilot: an MPI-parallel pilot for Harvester-placed PanDA jobs."""

__version__ = "0.1.0"
