"""The interface other programs import: Harvester plugins, payload wrappers, site tools.

- :mod:`hpcpilot.api.data`           move files with their size and checksum verified in passing
                                     (what Harvester's preparators call Pilot 2's data API for)
- :mod:`hpcpilot.api.communication`  the Harvester shared-file protocol, from the pilot's side
- :mod:`hpcpilot.api.services`       process-tree memory, the batch job's end, PanDA error codes

What these modules name is kept stable; the rest of hpcpilot is internal and may change.
"""
