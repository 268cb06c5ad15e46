"""Peak memory of a block of code, for compare.py's table and the benchmarks."""
from __future__ import annotations


class PeakMemory:
    """The peak resident memory of this whole process while a block runs, sampled in a background thread.

    Used as a context manager: `with PeakMemory() as memory: ...`, then `memory.peak_mb`. For compare.py's table and
    the benchmarks.

    Parameters
    ----------
    interval : float
        Seconds between samples.

    Attributes
    ----------
    peak_mb : float
        The highest RSS seen, in MiB (NaN until the block ends).
    gpu_peak_mb : float or None
        On CUDA, torch's peak allocation in MiB.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_mb = float("nan")
        self.gpu_peak_mb = None

    def __enter__(self):
        import threading

        import psutil

        self._process = psutil.Process()
        self._peak = self._process.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(self.interval):
                self._peak = max(self._peak, self._process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._process.memory_info().rss)
        self.peak_mb = self._peak / 2**20
        try:
            import torch

            if torch.cuda.is_available():
                self.gpu_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        except ImportError:
            pass
        return False


__all__ = ["PeakMemory"]
