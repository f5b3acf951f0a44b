"""Handler metrics in TorchServe's shape: ``context.metrics.add_time(...)`` and kin.

TorchServe hands handlers a metrics cache whose ``add_counter``, ``add_time``,
``add_size``, ``add_percent``, ``add_error`` and ``add_metric`` record a value
under a name and dimensions. Ours keeps the latest value of each metric (a
counter adds up) and writes one line per update to the worker's log::

    [METRICS]HandlerTime.ms:12.5|#ModelName:m,Level:Model|#type:gauge|#requestID:a,b

Only the standard library is used; nothing here imports torch.
"""

from __future__ import annotations

import enum
import functools
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["Dimension", "Metric", "MetricTypes", "Metrics", "timed"]

_TIME_UNITS = ("ms", "s")
_SIZE_UNITS = ("MB", "kB", "GB", "B")


class MetricTypes(enum.Enum):
    """The kinds of metric (TorchServe's ``ts.metrics.metric_type_enum``)."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Dimension:
    """One ``name:value`` label of a metric.

    Args:
        name: the label's name.
        value: the label's value.
    """

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def __repr__(self) -> str:
        return f"Dimension({self.name!r}, {self.value!r})"


class Metric:
    """One named metric: its unit, type, dimension names and latest value.

    Args:
        name: the metric's name.
        unit: its unit (``ms``, ``count``, ``MB``, ``percent``...).
        dimension_names: the names of its labels.
        metric_type: counter (values add up), gauge or histogram (latest value kept).
        emit: where each update's log line goes.
    """

    def __init__(
        self,
        name: str,
        unit: str,
        dimension_names: Iterable[str] = (),
        metric_type: MetricTypes = MetricTypes.COUNTER,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = metric_type
        self.value: float = 0
        self.updates = 0
        self._emit = emit or _to_stderr

    def add_or_update(
        self, value: float, dimension_values: Iterable[str] = (), request_id: str = ""
    ) -> None:
        """Record ``value``: a counter adds it, other types replace the last value."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {self.name!r}: value must be a number, got {value!r}")
        if self.metric_type is MetricTypes.COUNTER:
            self.value += value
        else:
            self.value = value
        self.updates += 1
        dims = ",".join(
            f"{n}:{v}" for n, v in zip(self.dimension_names, dimension_values, strict=False)
        )
        name = f"{self.name}.{self.unit}" if self.unit else self.name
        line = f"[METRICS]{name}:{value}|#{dims}|#type:{self.metric_type.value}"
        self._emit(f"{line}|#requestID:{request_id}" if request_id else line)

    def update(self, value: float) -> None:
        """Record ``value`` without dimensions (TorchServe's ``Metric.update``)."""
        self.add_or_update(value)


class Metrics:
    """The metrics of one model's handler, as ``context.metrics``.

    Args:
        model_name: added to every metric as the ``ModelName`` dimension.
        emit: where each update's log line goes (default: the worker's stderr).
    """

    def __init__(self, model_name: str, emit: Callable[[str], None] | None = None) -> None:
        self.model_name = model_name
        self.cache: dict[tuple[str, MetricTypes], Metric] = {}
        self.request_ids: dict[int, str] = {}
        self._emit = emit

    def set_request_ids(self, request_ids: dict[int, str]) -> None:
        """The ids of the batch now running (called by the runtime)."""
        self.request_ids = request_ids

    def add_metric(
        self,
        name: str,
        value: float,
        unit: str,
        idx: int | None = None,
        dimensions: list[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.COUNTER,
    ) -> None:
        """Record a metric of any type and unit (a counter unless told otherwise)."""
        dims = self._default_dimensions(dimensions)
        metric = self._get_or_add(name, unit, dims, metric_type)
        metric.add_or_update(value, [d.value for d in dims], self._request_id(idx))

    def add_counter(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        dimensions: list[Dimension] | None = None,
    ) -> None:
        """Add ``value`` to a counter (unit ``count``)."""
        self.add_metric(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        unit: str = "ms",
        dimensions: list[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.GAUGE,
    ) -> None:
        """Record a duration, in ``ms`` or ``s``."""
        if unit not in _TIME_UNITS:
            raise ValueError(f"the unit of a time metric is one of {list(_TIME_UNITS)}")
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_size(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        unit: str = "MB",
        dimensions: list[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.GAUGE,
    ) -> None:
        """Record a size, in ``MB``, ``kB``, ``GB`` or ``B``."""
        if unit not in _SIZE_UNITS:
            raise ValueError(f"the unit of a size metric is one of {list(_SIZE_UNITS)}")
        self.add_metric(name, value, unit, idx, dimensions, metric_type)

    def add_percent(
        self,
        name: str,
        value: float,
        idx: int | None = None,
        dimensions: list[Dimension] | None = None,
        metric_type: MetricTypes = MetricTypes.GAUGE,
    ) -> None:
        """Record a percentage."""
        self.add_metric(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value: float, dimensions: list[Dimension] | None = None) -> None:
        """Count an error (a counter without unit)."""
        self.add_metric(name, value, "", None, dimensions, MetricTypes.COUNTER)

    def get_metric(
        self, metric_name: str, metric_type: MetricTypes = MetricTypes.COUNTER
    ) -> Metric:
        """The metric recorded under this name and type.

        Raises:
            KeyError: there is none.
        """
        return self.cache[(metric_name, metric_type)]

    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: Iterable[str] = (),
        metric_type: MetricTypes = MetricTypes.COUNTER,
    ) -> Metric:
        """Create (or replace) a metric and return it, for ``update`` calls later."""
        metric = Metric(metric_name, unit, dimension_names, metric_type, self._emit)
        self.cache[(metric_name, metric_type)] = metric
        return metric

    def _get_or_add(
        self, name: str, unit: str, dims: list[Dimension], metric_type: MetricTypes
    ) -> Metric:
        metric = self.cache.get((name, metric_type))
        if metric is None:
            metric = self.add_metric_to_cache(name, unit, [d.name for d in dims], metric_type)
        return metric

    def _default_dimensions(self, dimensions: list[Dimension] | None) -> list[Dimension]:
        dims = list(dimensions or [])
        names = {d.name for d in dims}
        if "ModelName" not in names:
            dims.append(Dimension("ModelName", self.model_name))
        if "Level" not in names:
            dims.append(Dimension("Level", "Model"))
        return dims

    def _request_id(self, idx: int | None) -> str:
        if idx is not None and idx in self.request_ids:
            return self.request_ids[idx]
        return ",".join(self.request_ids.values())


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


Method = TypeVar("Method", bound=Callable[..., Any])


def timed(func: Method) -> Method:
    """Time a handler method as ``ts_handler_<name>`` (TorchServe's ``@timed``).

    Like TorchServe, it measures only when the model's configuration says
    ``handler: {profile: true}``; otherwise it just calls the method.
    """

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        context = getattr(self, "context", None)
        settings = getattr(context, "model_yaml_config", {}).get("handler")
        if not (isinstance(settings, dict) and settings.get("profile")):
            return func(self, *args, **kwargs)
        start = time.perf_counter()
        result = func(self, *args, **kwargs)
        elapsed = (time.perf_counter() - start) * 1000
        context.metrics.add_time(f"ts_handler_{func.__name__}", elapsed)  # type: ignore[union-attr]
        return result

    return wrapper  # type: ignore[return-value]
