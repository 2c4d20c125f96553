"""Process-wide counters and gauges, rendered in Prometheus' text format for GET /metrics.

Each counter has one writing thread (its owning actor), so plain int updates are enough; readers
may see a value a moment old, never a torn one. A counter family (one counter per value of one
label, e.g. ``kind``) adds a label value under a lock, so a scrape never iterates a changing map.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


def _label_value(value: str) -> str:
    """A label value escaped as Prometheus' text format wants it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class CounterFamily:
    """Counters of one name told apart by one label: ``name{label="value"} n``."""

    def __init__(self, name: str, help_text: str, label: str) -> None:
        self.name = name
        self.help = help_text
        self.label = label
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, value: str, n: int = 1) -> int:
        """Add n to the counter of label value ``value``; its new total."""
        with self._lock:
            total = self._values[value] = self._values.get(value, 0) + n
        return total

    def get(self, value: str) -> int:
        return self._values.get(value, 0)

    def values(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def sample_name(self, value: str) -> str:
        return f'{self.name}{{{self.label}="{_label_value(value)}"}}'


class Metrics:
    """A small registry: counters owned by actors, gauges computed when scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, Counter] = {}
        self._families: dict[str, CounterFamily] = {}
        self._gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def counter(self, name: str, help_text: str) -> Counter:
        with self._lock:
            found = self._counters.get(name)
            if found is None:
                found = self._counters[name] = Counter(name, help_text)
            return found

    def counter_family(self, name: str, help_text: str, label: str) -> CounterFamily:
        with self._lock:
            found = self._families.get(name)
            if found is None:
                found = self._families[name] = CounterFamily(name, help_text, label)
            return found

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        with self._lock:
            self._gauges[name] = (help_text, read)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            counters = list(self._counters.values())
            families = list(self._families.values())
            gauges = list(self._gauges.items())
        out: dict[str, float] = {c.name: c.value for c in counters}
        for f in families:
            out.update((f.sample_name(v), n) for v, n in sorted(f.values().items()))
        for name, (_help, read) in gauges:
            try:
                out[name] = read()
            except Exception:  # a gauge whose source is restarting is simply absent
                continue
        return out

    def render_prometheus(self) -> str:
        with self._lock:
            counters = list(self._counters.values())
            families = list(self._families.values())
            gauges = list(self._gauges.items())
        lines: list[str] = []
        for c in counters:
            lines += [f"# HELP {c.name} {c.help}", f"# TYPE {c.name} counter", f"{c.name} {c.value}"]
        for f in families:
            lines += [f"# HELP {f.name} {f.help}", f"# TYPE {f.name} counter"]
            lines += [f"{f.sample_name(v)} {n}" for v, n in sorted(f.values().items())]
        for name, (help_text, read) in gauges:
            try:
                value = read()
            except Exception:
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
