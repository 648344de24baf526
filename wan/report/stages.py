"""Wall time and peak memory per named stage of a run.

    timer = StageTimer("cuda")
    with timer.stage("load"):
        ...
    with timer.stage("denoise"):
        ...
    report.timings(timer)

Peak memory is what the device can tell: on CUDA the peak of torch.cuda.max_memory_allocated
inside the stage (the counter is reset on entering each stage, so do not read it elsewhere
meanwhile); on the CPU the process' peak resident set size so far (VmHWM on Linux), which never
goes down, so a stage shows the highest mark reached by the end of it. Stages may nest (an outer
stage's peak includes its inner stages') and repeat (calls and seconds add up, the peak is the
maximum).
"""
import contextlib
import logging
import resource
import sys
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class StageRecord:
    name: str
    calls: int = 0
    seconds: float = 0.0
    peak_bytes: int = 0


class StageTimer:
    """Records (calls, seconds, peak memory) per stage name, in the order stages first ran."""

    def __init__(self, device=None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.memory_kind = "peak CUDA memory allocated" if self.cuda else "peak process RSS"
        self.records = {}
        self._open_peaks = []  # CUDA: peaks so far of the stages entered and not yet left, outermost first
        self._created = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name):
        record = self.records.setdefault(name, StageRecord(name))
        self._enter()
        start = time.perf_counter()
        try:
            yield record
        finally:
            if self.cuda:
                torch.cuda.synchronize(self.device)  # count the queued GPU work in this stage
            seconds = time.perf_counter() - start
            peak = self._leave()
            record.calls += 1
            record.seconds += seconds
            record.peak_bytes = max(record.peak_bytes, peak)
            log.info("stage %s: %.2f s, %s %s", name, seconds, self.memory_kind, format_bytes(peak))

    @property
    def total_seconds(self):
        """Seconds since the timer was made."""
        return time.perf_counter() - self._created

    def rows(self):
        """One dict per stage (stage, calls, seconds, peak memory), for a report table."""
        return [{"stage": r.name, "calls": r.calls, "seconds": round(r.seconds, 3),
                 self.memory_kind: format_bytes(r.peak_bytes)} for r in self.records.values()]

    def _enter(self):
        if self.cuda:
            # Fold the peak reached so far into every open stage before the counter restarts.
            current = torch.cuda.max_memory_allocated(self.device)
            self._open_peaks = [max(peak, current) for peak in self._open_peaks]
            torch.cuda.reset_peak_memory_stats(self.device)
            self._open_peaks.append(0)

    def _leave(self):
        if not self.cuda:
            return process_peak_rss()
        peak = max(self._open_peaks.pop(), torch.cuda.max_memory_allocated(self.device))
        if self._open_peaks:
            self._open_peaks[-1] = max(self._open_peaks[-1], peak)
        return peak


def process_peak_rss():
    """This process' peak resident set size in bytes.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss, which a child inherits from its parent at
    fork: a script started from a large process (a test worker) would report the parent's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, other systems KiB


def format_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
