"""Peak memory of the current process: VmHWM (peak RSS) and sampled peak RssAnon (anonymous memory)."""

from __future__ import annotations

import threading
import time


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class MemWatch:
    """Samples RssAnon every ``interval`` seconds in a thread; ``peak_anon`` is the largest seen."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_anon = _status().get("RssAnon", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        self.peak_anon = max(self.peak_anon, _status().get("RssAnon", 0))

    def __enter__(self) -> MemWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @staticmethod
    def peak_rss() -> int:
        return _status()["VmHWM"]

    @staticmethod
    def current() -> dict[str, int]:
        return _status()
