"""The supervision layer: the nursery tree that owns every model's workers.

``core.Supervisor`` owns a ``pool.Pool`` per model version; each pool runs
``slot.Slot`` restart loops, each slot one ``worker.Worker`` incarnation at a
time, started through the ``process.Launcher`` seam. Restart decisions come
from ``supervisor.policy``; snapshots for describe and metrics from ``stats``.
Imports point down only: to ``supervisor.models`` and the foundation modules.
"""

__all__: list[str] = []
