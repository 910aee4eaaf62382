"""FakeHarvester: plays Harvester's side of the event-service file exchange (shared/PROTOCOL.md, section 2).

Like Harvester's shared-file messenger it looks for ``worker_requestevents.json``,
answers with the next ranges by rewriting ``JobsEventRanges.json`` *in place*
(truncate, write; here in two halves with a pause between them, so readers do
meet a half-written file), then deletes the request. When its ranges run out,
it answers with an empty list. ``answer_delay`` makes it take that long to
answer each request, as a busy Harvester does.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from hpcpilot.config import HarvesterFiles


class FakeHarvester:
    def __init__(self, ap_root: Path, ranges: list[dict[str, Any]], files: HarvesterFiles = HarvesterFiles(),
                 interval: float = 0.02, write_pause: float = 0.0, answer_delay: float = 0.0):
        self.request_path = Path(ap_root) / files.request_events
        self.answer_path = Path(ap_root) / files.event_ranges
        self.ranges = list(ranges)
        self.interval = interval
        self.write_pause = write_pause
        self.answer_delay = answer_delay
        self.requests: list[dict[str, Any]] = []
        self.answers: list[dict[str, list[dict[str, Any]]]] = []
        self._next = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-harvester", daemon=True)

    def start(self) -> "FakeHarvester":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __enter__(self) -> "FakeHarvester":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def serve_once(self) -> bool:
        """Answer the request if one is there; True if it did."""
        try:
            request = json.loads(self.request_path.read_text())
        except (FileNotFoundError, ValueError):
            return False
        self.requests.append(request)
        self._stop.wait(self.answer_delay)
        answer = {pandaid: self._take(int(wanted["nRanges"])) for pandaid, wanted in request.items()}
        self._write_in_place(answer)
        self.answers.append(answer)
        self.request_path.unlink()
        return True

    def _take(self, count: int) -> list[dict[str, Any]]:
        batch = self.ranges[self._next:self._next + count]
        self._next += len(batch)
        return batch

    def _write_in_place(self, answer: dict[str, Any]) -> None:
        text = json.dumps(answer)
        middle = len(text) // 2
        with open(self.answer_path, "w") as handle:
            handle.write(text[:middle])
            handle.flush()
            time.sleep(self.write_pause)
            handle.write(text[middle:])

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.serve_once()
            self._stop.wait(self.interval)
