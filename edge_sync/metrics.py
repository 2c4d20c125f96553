"""The process's Prometheus metrics, backed by prometheus-client: one ``CollectorRegistry`` per
``Metrics`` (never the library's global ``REGISTRY``: tests build several agents and clouds in
one process), exposed by ``prometheus_client.generate_latest`` at the admin APIs' GET /metrics
(``CONTENT_TYPE``) and flattened by ``snapshot`` for the status JSON.

What this facade adds to the library, and nothing else:
- ``counter`` returns the one counter of a name, however many components (or incarnations of a
  restarted actor) ask for it, so its value outlives a restart;
- ``gauge`` / ``gauge_family`` register gauges read when scraped (queue depth, link state), a
  gauge whose source is restarting being absent from that scrape; registering a name again
  replaces the reader (a restarted actor brings its own);
- ``read_counter`` registers a counter kept elsewhere (a tally since the start), read when
  scraped the same way;
- ``info`` registers an info metric (``<name>_info``, the library's ``InfoMetricFamily``: one
  sample of value 1 whose labels describe something, such as the rule chain in force), read
  when scraped the same way, absent while there is nothing to describe;
- ``histogram`` returns a ``BatchHistogram``: the link observes a whole acknowledged batch under
  one lock instead of one lock per event.

Thread-safety: the library's counters lock per increment, so counting stays out of per-event
loops: callers ``inc(n)`` once per batch, and bind a labelled counter's child (``.labels(...)``)
once, not per event. Names follow https://prometheus.io/docs/practices/naming/ and carry the
project's prefix (``edge_sync_`` for the agent, ``edge_cloud_`` for the reference cloud);
docs/metrics.md lists them.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "BatchHistogram", "Counter", "Metrics", "device_answers"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The Content-Type of ``Metrics.exposition()`` (the library's text format)."""

# The library adds a ``<name>_created`` series (the counter's creation time) to every counter by
# default; the process start time already says it, and it doubles the page. A process-wide
# switch of the library (the agent and the cloud are the only users of prometheus-client here).
disable_created_metrics()

GaugeReader = Callable[[], float]
FamilyReader = Callable[[], Mapping[tuple[str, ...], float]]
InfoReader = Callable[[], Mapping[str, str] | None]


class _ReadGauges(Collector):
    """Gauges computed when scraped: ``read`` answers {label values: value}; an exception
    (its source is restarting) leaves the gauge out of that scrape."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str], read: FamilyReader) -> None:
        self.name, self.help, self.labels, self.read = name, help_text, tuple(labels), read

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.help, labels=self.labels)]

    def collect(self) -> Iterable[Metric]:
        try:
            values = self.read()
        except Exception:
            return []
        family = GaugeMetricFamily(self.name, self.help, labels=self.labels)
        for label_values, value in values.items():
            family.add_metric(list(label_values), float(value))
        return [family]


class _ReadCounter(Collector):
    """A counter without labels whose value, kept elsewhere since the start, is read when
    scraped (the library's ``CounterMetricFamily``); an exception leaves it out of that
    scrape."""

    def __init__(self, name: str, help_text: str, read: GaugeReader) -> None:
        self.name, self.help, self.read = name, help_text, read

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.help)]

    def collect(self) -> Iterable[Metric]:
        try:
            value = float(self.read())
        except Exception:
            return []
        return [CounterMetricFamily(self.name, self.help, value=value)]


class _ReadInfo(Collector):
    """An info metric computed when scraped: ``read`` answers its labels (in ``labels``), or
    None when there is nothing to describe; an exception leaves it out of that scrape too."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str], read: InfoReader) -> None:
        self.name, self.help, self.labels, self.read = name, help_text, tuple(labels), read

    def describe(self) -> Iterable[Metric]:
        return [InfoMetricFamily(self.name, self.help, labels=self.labels)]

    def collect(self) -> Iterable[Metric]:
        try:
            values = self.read()
        except Exception:
            return []
        family = InfoMetricFamily(self.name, self.help, labels=self.labels)
        if values is not None:
            family.add_metric([values[label] for label in self.labels], {})
        return [family]


class BatchHistogram(Collector):
    """A histogram observed a batch at a time (one lock per batch), exposed through the
    library's ``HistogramMetricFamily``. Buckets are upper bounds (``le``); +Inf is implied."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help_text
        self._bounds = tuple(sorted(float(b) for b in buckets))
        self._lock = threading.Lock()
        self._counts = [0] * (len(self._bounds) + 1)  # the last: above every bound
        self._sum = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        counts = [0] * len(self._counts)
        total = 0.0
        bounds = self._bounds
        for v in values:
            counts[bisect.bisect_left(bounds, v)] += 1
            total += v
        with self._lock:
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]
            self._sum += total

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.help)]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self._bounds, float("inf")), counts, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return [HistogramMetricFamily(self.name, self.help, buckets=cumulative, sum_value=total)]


class Metrics:
    """One registry of a process's metrics, all named with ``prefix``."""

    def __init__(self, prefix: str = "edge_sync") -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._counters: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        self._gauges: dict[str, Collector] = {}
        self._histograms: dict[str, BatchHistogram] = {}

    def _check(self, name: str) -> None:
        if not name.startswith(self.prefix + "_"):
            raise ValueError(f"metric {name!r} lacks this registry's prefix {self.prefix}_")

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        """The counter ``name`` (ending in ``_total``), made at the first call. With labels, bind
        the children once (``.labels(...)``) where the counting is hot."""
        self._check(name)
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        labels = tuple(labels)
        with self._lock:
            found = self._counters.get(name)
            if found is None:
                found = self._counters[name] = (Counter(
                    name, help_text, labelnames=labels, registry=self.registry), labels)
            elif found[1] != labels:
                raise ValueError(f"counter {name} has labels {found[1]}, not {labels}")
            return found[0]

    def gauge(self, name: str, help_text: str, read: GaugeReader) -> None:
        """A gauge without labels, ``read`` when scraped."""
        self.gauge_family(name, help_text, (), lambda: {(): read()})

    def gauge_family(self, name: str, help_text: str, labels: Sequence[str],
                     read: FamilyReader) -> None:
        """A labelled gauge: ``read`` answers {label values (in ``labels`` order): value}."""
        self._check(name)
        self._register_read(name, _ReadGauges(name, help_text, labels, read))

    def read_counter(self, name: str, help_text: str, read: GaugeReader) -> None:
        """A counter (``name`` ending in ``_total``) whose value another component keeps since
        the start and ``read`` answers when scraped: it must never decrease."""
        self._check(name)
        if not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        self._register_read(name, _ReadCounter(name, help_text, read))

    def info(self, name: str, help_text: str, labels: Sequence[str], read: InfoReader) -> None:
        """The info metric ``<name>_info``: one sample of value 1 with the labels ``read``
        answers when scraped ({label: value}, every one of ``labels``), none when it answers
        None (Prometheus' convention for metadata that changes: an info metric joined on
        ``instance``)."""
        self._check(name)
        if name.endswith("_info"):
            raise ValueError(f"info metric {name!r}: give the name without _info")
        self._register_read(name, _ReadInfo(name, help_text, labels, read))

    def _register_read(self, name: str, collector: Collector) -> None:
        with self._lock:
            old = self._gauges.pop(name, None)
            if old is not None:
                self.registry.unregister(old)
            self.registry.register(collector)
            self._gauges[name] = collector

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> BatchHistogram:
        self._check(name)
        with self._lock:
            found = self._histograms.get(name)
            if found is None:
                found = self._histograms[name] = BatchHistogram(name, help_text, buckets)
                self.registry.register(found)
            return found

    def exposition(self) -> bytes:
        """The Prometheus text of every metric (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's value (0 when absent): ``value("edge_sync_events_total", lane="high",
        outcome="appended")``. A counter's is read from that counter alone (no gauge is read)."""
        with self._lock:
            counter = self._counters.get(name)
        if counter is None:
            found = self.registry.get_sample_value(name, labels)
            return 0.0 if found is None else found
        for family in counter[0].collect():
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0

    def snapshot(self) -> dict[str, float | int]:
        """Every sample as ``{'name{label="value",...}': value}`` (histogram buckets left out:
        their ``_sum`` and ``_count`` stay); whole numbers as ints."""
        return dict(self._samples())

    def _samples(self) -> Iterator[tuple[str, float | int]]:
        for family in self.registry.collect():
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    continue
                key = s.name
                if s.labels:
                    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
                    key = f"{s.name}{{{inner}}}"
                value = s.value
                yield key, int(value) if float(value).is_integer() else value


def device_answers(metrics: Metrics) -> Counter:
    """``edge_sync_device_requests_total{protocol,code}``: shared by the device HTTP API (its
    status codes) and the MQTT server (CONNACK return codes)."""
    return metrics.counter(
        "edge_sync_device_requests_total", "device API answers by protocol and code (HTTP "
        "status of posts and long polls; MQTT CONNACK return code)", ("protocol", "code"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
