"""The log of a full store's refusals: one WARNING when refusals start, with the first refused
command in full, then one summary per interval while they go on (how many, from how many
entities, the ones refused most), and one INFO once the store accepts again. A full store
refuses every device request at the rate devices send them (thousands a second): one line each
would rotate the rest of the log away within minutes. Each refusal is still logged at DEBUG
(``append refused: ...``) and counted in ``/metrics`` by its owner.

Pure: no lock, no thread, no clock of its own (``wall_ms`` is passed in). Its owner (the queue
actor) calls it from its thread and calls ``tick`` once per interval.
"""

from __future__ import annotations

import uuid
from collections import Counter

from loguru import logger

from edge_sync.common.iso_time import iso_ms

__all__ = ["LOG_INTERVAL_S", "MOST_REFUSED", "RefusalLog"]

LOG_INTERVAL_S = 60.0
"""How often refusals that go on are summarised by default (storage.refusal_log_interval_s:
the queue's refusal ticker)."""

MOST_REFUSED = 5
"""The entities named in a summary, those refused most in its interval."""

_log = logger.bind(component="queue")


class RefusalLog:
    """The refusals of one store: a run of them starts at the first, ends at a tick that finds
    commands accepted and none refused since the previous tick."""

    __slots__ = ("_accepted", "_by_entity", "_entities", "_first_ms", "_interval", "_last_ms",
                 "_total", "_unlogged")

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self._interval = interval_s  # told in the first line (the owner ticks at it)
        self._first_ms: int | None = None  # the run's first refusal (None: no run)
        self._last_ms = 0
        self._total = 0  # refusals of the run
        self._entities: set[uuid.UUID] = set()  # of the run
        self._unlogged = 0  # refusals since the last line
        self._by_entity: Counter[uuid.UUID] = Counter()  # since the last line
        self._accepted = False  # a command was accepted since the last refusal

    @property
    def refusing(self) -> bool:
        """A run of refusals goes on (no tick has seen it end)."""
        return self._first_ms is not None

    def refused(self, entity: uuid.UUID, events: int, error: BaseException, wall_ms: int) -> None:
        """A command refused because the store is full: the run's first is logged at once in
        full, the others are counted for the next summary."""
        self._last_ms = wall_ms
        self._total += 1
        self._entities.add(entity)
        self._accepted = False
        if self._first_ms is None:
            self._first_ms = wall_ms
            _log.bind(entity=str(entity), events=events, error=str(error)).warning(
                "storage full: new data refused from now on ({}); refusals are summarised "
                "every {:g} s until the store accepts again", error, self._interval)
            return
        self._unlogged += 1
        self._by_entity[entity] += 1

    def accepted(self) -> None:
        """A command committed: during a run, the next tick may find that the run ended."""
        if self._first_ms is not None:
            self._accepted = True

    def tick(self) -> None:
        """Once per interval: the summary of the refusals since the last line, or the end of
        the run when commands were accepted and none refused since it."""
        first = self._first_ms
        if first is None:
            return
        if self._unlogged:
            self._summary(first)
        elif self._accepted:
            self._end(first)

    def flush(self) -> None:
        """At the owner's stop: the refusals not told yet are told."""
        if self._first_ms is not None and self._unlogged:
            self._summary(self._first_ms)

    def _summary(self, first: int) -> None:
        most = self._by_entity.most_common(MOST_REFUSED)
        _log.bind(refused=self._unlogged, total=self._total, entities=len(self._by_entity),
                  since=iso_ms(first, str(first)), last=iso_ms(self._last_ms, str(self._last_ms)),
                  most_refused={str(e): n for e, n in most}).warning(
            "storage full: {} more commands refused from {} entities since the last line, {} "
            "since {}; most: {}", self._unlogged, len(self._by_entity), self._total,
            iso_ms(first, str(first)), ", ".join(f"{e} ({n})" for e, n in most))
        self._unlogged = 0
        self._by_entity.clear()

    def _end(self, first: int) -> None:
        _log.bind(total=self._total, entities=len(self._entities), since=iso_ms(first, str(first)),
                  last=iso_ms(self._last_ms, str(self._last_ms))).info(
            "storage accepts again after {} refusals from {} entities, from {} to {}",
            self._total, len(self._entities), iso_ms(first, str(first)),
            iso_ms(self._last_ms, str(self._last_ms)))
        self._first_ms = None
        self._total = 0
        self._entities.clear()
        self._accepted = False
