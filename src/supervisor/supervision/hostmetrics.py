"""The host's CPU, memory and disk, under TorchServe's metric names and units.

Read with psutil at scrape time (a few /proc reads). GPU metrics are left out:
TorchServe gets them from ``nvidia-smi`` or pynvml; running ``nvidia-smi`` per scrape
would block the event loop for tens of milliseconds, and pynvml is no dependency of ours.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["SystemCollector", "process_rss"]

_HOST = ("Level", "Hostname")
_MIB = 1024.0**2
_GIB = 1024.0**3


class SystemCollector(Collector):
    """The host's CPU, memory and disk, as TorchServe's ``metric_collector.py`` names them.

    Gauges labelled ``Level="Host"`` and ``Hostname``: ``CPUUtilization`` (percent since
    the previous scrape), ``MemoryUsed``/``MemoryAvailable`` (MiB), ``MemoryUtilization``,
    ``DiskUsage``/``DiskAvailable`` (GiB) and ``DiskUtilization`` (percent). No GPU metrics.

    Args:
        hostname: the ``Hostname`` label.
        disk_path: a path on the filesystem whose usage is reported.
    """

    def __init__(self, hostname: str, disk_path: str) -> None:
        self._labels = ["Host", hostname]
        self._disk_path = disk_path
        # psutil keeps one interval per thread: each scrape reports the CPU since the
        # previous scrape by anyone in this thread. The first call only starts it.
        psutil.cpu_percent(interval=None)

    def collect(self) -> Iterator[Metric]:
        """Yield one gauge per host metric; a disk that cannot be read is left out."""
        memory = psutil.virtual_memory()
        values = {
            "CPUUtilization": psutil.cpu_percent(interval=None),
            "MemoryUsed": memory.used / _MIB,
            "MemoryAvailable": memory.available / _MIB,
            "MemoryUtilization": memory.percent,
        }
        try:
            disk = psutil.disk_usage(self._disk_path)
        except OSError:
            pass
        else:
            values |= {
                "DiskUsage": disk.used / _GIB,
                "DiskAvailable": disk.free / _GIB,
                "DiskUtilization": disk.percent,
            }
        for name, value in values.items():
            family = GaugeMetricFamily(name, f"Host {name} (TorchServe units)", labels=_HOST)
            family.add_metric(self._labels, float(value))
            yield family


def process_rss(pid: int | None) -> int | None:
    """The resident memory of ``pid`` in bytes, or None if it has no live process."""
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return None
