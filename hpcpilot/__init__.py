"""hpcpilot: an MPI-parallel pilot for Harvester-placed PanDA jobs."""
import logging

__version__ = "0.1.0"

# A library's log stays silent until its user sets logging up (the CLI does): a program calling hpcpilot.api
# gets results that say what failed, not also warnings on its standard error.
logging.getLogger(__name__).addHandler(logging.NullHandler())
