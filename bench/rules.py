"""``scripts/bench rules``: what a rule chain costs the edge's ingest, and how much cloud traffic
an aggregation chain saves.

Both measurements run the agent in process: ``EdgeApp(cfg).start()`` on a fresh temporary store
(as bench/ingest.py does), configured from the environment like ``edge-sync run`` except for the
store, ports, log level, ``rules.file`` and the cloud's routing key, which the benchmark sets:
no cloud link, so the events the edge produces stay queued in its event log, where they are
counted. The chains are written by the benchmark into its temporary folder (ThingsBoard's export shape).

- **Ingest with a chain vs without** (``no_chain_eps``, ``chain_eps``, ``ratio``): each of
  ``--runs`` runs measures the agent without a chain, then with the 6-node chain below, each on
  its own fresh store, so both see the same machine load; ``ratio`` is chain / no chain of the
  same run, and the line reports the median of the per-run ratios (each run in ``samples``).
  ``--threads`` threads post batches of ``--batch`` entries (``{"temperature": t}``) with
  ``app.service.post_entries`` to ``--devices`` devices, keeping ``--window`` futures
  outstanding. They post for ``--warmup`` + ``--duration`` seconds; an entry counts when its
  future resolved (committed) within the ``--duration`` after the warm-up (the posts in flight
  fill up first: with the chain they take seconds to go through). One entry per device is
  posted and committed before, not counted (the shards compile the chain's scripts and load
  each device on its first message). The posts in flight at the end are waited for (not
  counted), at most TAIL_S: an agent that does not commit them is an error and the remaining
  ingest measurements are skipped (that agent does not stop: its shards still work through
  them; the benchmark exits without waiting for their threads).
  The chain (``INGEST_CHAIN``): message type switch -> check message (``temperature`` present)
  -> JS filter (``msg.temperature > -1000``) -> JS transform (adds ``temperature_f``) -> save
  timeseries -> push to cloud; every message visits the 6 nodes, the scripts run in
  quickjs-ng (one engine per shard). No log node: logging each message would measure the logger.
  Checked every run: the chain is in force (or none is, without), every posted entry became
  one TIMESERIES_UPDATED event, and with the chain every node received every entry, none failed,
  and the events carry the transform's ``temperature_f``.
- **Cloud traffic reduction by aggregation** (``aggregation_in``, ``aggregation_out``,
  ``reduction``), measured once: a chain ``edge_sync.rules.AggregateNode`` (``--agg-interval``
  seconds) -> push to cloud. For each of ``--agg-windows`` windows, every one of
  ``--agg-devices`` devices posts ``--agg-per-window`` messages (``temperature`` and
  ``humidity``, integers) as one post, so they fall in one window whatever the machine's load;
  the benchmark then waits (polling the event log read-only, with a deadline) until every
  device's window closed and its summary was queued, before the next window. ``aggregation_in``
  is the messages accepted (committed), ``aggregation_out`` the TIMESERIES_UPDATED events the
  edge queued for the cloud, ``reduction`` = in / out. Every summary is checked exactly (count,
  sum, min, max, avg of both keys, per device and window): any difference is an error.

``--floor``: each ingest run also measures two chains that do less (FLOOR_CHAINS): push to cloud
alone, which is what the edge does without a chain, and save timeseries -> push; ``floor``
holds their rates and ratios to the same run's no-chain rate. They tell what the engine costs
with no node doing any work of its own, and what the local save adds.

``--breakdown``: after the runs, one more ingest measurement without and one with the chain,
the agent's functions timed (bench/rules_breakdown.py): ``breakdown`` holds µs of thread CPU per
entry by function, with the rates of those two timed measurements.

Targets: ``ratio`` >= 0.5 (the 6-node chain, two of its nodes running scripts, costs at most half
of the ingest rate) and ``reduction`` >= 500. A target not met is reported (``met``), not an error.
Errors (a chain not in force, posts not committed, an event missing, a node failing, a summary
that differs, a window that did not close in time) are listed in ``errors`` and make the exit
code 1, after the JSON line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    CpuMeter,
    create_devices,
    emit,
    inproc_app,
    median,
    post_closed_loop,
    progress,
    rounded,
)
from bench.e2e import machine_load
from edge_sync.api.payloads import Entry
from edge_sync.storage.records import Action

if TYPE_CHECKING:
    from edge_sync.app import EdgeApp

TARGETS: dict[str, float] = {"ratio": 0.5, "reduction": 500.0}  # at least
_TS0 = 1_700_000_000_000  # entry timestamps (ms) of the ingest measurement; any fixed value will do
_POLL_S = 0.02
TAIL_S = 60.0
"""How long the posts in flight at the end of an ingest measurement may take to commit."""
_CLOSE_SLACK_S = 60.0
"""How long after a window's interval its summaries may take to be queued before it is an error."""

_ENGINE = "org.thingsboard.rule.engine."


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = 3
    duration: float = 3.0
    warmup: float = 1.0
    threads: int = 4
    window: int = 32
    batch: int = 100
    devices: int = 16
    agg_devices: int = 10
    agg_per_window: int = 1000
    agg_windows: int = 3
    agg_interval_s: int = 5
    only: str = "all"
    quick: bool = False
    breakdown: bool = False
    floor: bool = False


# -- the chains ------------------------------------------------------------------------------------


def _node(kind: str, name: str, configuration: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "name": name, "debugMode": False, "configurationVersion": 0,
            "configuration": configuration}


def _export(name: str, nodes: list[dict[str, Any]],
            connections: list[tuple[int, int, str]]) -> dict[str, Any]:
    """A rule chain in ThingsBoard's export shape, first node 0."""
    return {
        "ruleChain": {"name": name, "type": "EDGE", "firstRuleNodeId": None, "root": False,
                      "debugMode": False, "configuration": None},
        "metadata": {"firstNodeIndex": 0, "nodes": nodes,
                     "connections": [{"fromIndex": a, "toIndex": b, "type": t}
                                     for a, b, t in connections],
                     "ruleChainConnections": None},
    }


TRANSFORM_JS = ("msg.temperature_f = msg.temperature * 9 / 5 + 32;\n"
                "return {msg: msg, metadata: metadata, msgType: msgType};")

INGEST_CHAIN = _export(
    "Bench ingest (6 nodes)",
    [
        _node(_ENGINE + "filter.TbMsgTypeSwitchNode", "Message Type Switch", {"version": 0}),
        _node(_ENGINE + "filter.TbCheckMessageNode", "Has temperature",
              {"messageNames": ["temperature"], "metadataNames": [], "checkAllKeys": True}),
        _node(_ENGINE + "filter.TbJsFilterNode", "Plausible",
              {"scriptLang": "JS", "jsScript": "return msg.temperature > -1000;"}),
        _node(_ENGINE + "transform.TbTransformMsgNode", "Add Fahrenheit",
              {"scriptLang": "JS", "jsScript": TRANSFORM_JS}),
        _node(_ENGINE + "telemetry.TbMsgTimeseriesNode", "Save Timeseries", {"defaultTTL": 0}),
        _node(_ENGINE + "edge.TbMsgPushToCloudNode", "Push to cloud", {"scope": "SERVER_SCOPE"}),
    ],
    [(0, 1, "Post telemetry"), (1, 2, "True"), (2, 3, "True"), (3, 4, "Success"),
     (4, 5, "Success")],
)
INGEST_NODES = len(INGEST_CHAIN["metadata"]["nodes"])

_PUSH = _node(_ENGINE + "edge.TbMsgPushToCloudNode", "Push to cloud", {"scope": "SERVER_SCOPE"})
FLOOR_CHAINS: dict[str, dict[str, Any]] = {
    "push": _export("Bench floor: push only (1 node)", [_PUSH], []),
    "save_push": _export(
        "Bench floor: save and push (2 nodes)",
        [_node(_ENGINE + "telemetry.TbMsgTimeseriesNode", "Save Timeseries", {"defaultTTL": 0}),
         _PUSH],
        [(0, 1, "Success")]),
}
"""``--floor``: chains that do less than INGEST_CHAIN, measured in the same runs. ``push`` sends
every message to the cloud as it came, which is what the edge does without a chain: its ratio
is what the engine itself costs. ``save_push`` adds INGEST_CHAIN's local save (latest values and
the local timeseries)."""


def aggregate_chain(interval_s: int, max_pending: int) -> dict[str, Any]:
    """``edge_sync.rules.AggregateNode`` -> push to cloud."""
    return _export(
        "Bench aggregation",
        [
            _node("edge_sync.rules.AggregateNode", "Aggregate",
                  {"interval": interval_s, "maxPendingMsgs": max_pending}),
            _node(_ENGINE + "edge.TbMsgPushToCloudNode", "Push to cloud",
                  {"scope": "SERVER_SCOPE"}),
        ],
        [(0, 1, "Success")],
    )


def write_chain(path: Path, chain: dict[str, Any]) -> Path:
    path.write_text(json.dumps(chain, indent=2) + "\n", encoding="utf-8")
    return path


# -- the agent in process --------------------------------------------------------------------------


@contextlib.contextmanager
def chain_app(workdir: Path, prefix: str, chain_file: Path | None) -> Iterator[EdgeApp]:
    """The agent in process on a fresh store (inproc_app) with ``rules.file`` = ``chain_file``
    (None: no chain, also when the caller's environment names one), stopped when the block ends.
    Once it has started, the garbage collector is tuned as ``edge-sync run`` tunes it
    (``tune_gc_for_service``); Python's settings come back when the block ends (the freeze
    undone, so what this agent leaves is collected before the next one starts)."""
    from edge_sync.app import tune_gc_for_service

    rules_file = "" if chain_file is None else str(chain_file)
    thresholds = gc.get_threshold()
    # no cloud link: the events stay queued, where they are counted
    with inproc_app(workdir, prefix, EDGE_RULES_FILE=rules_file, CLOUD_ROUTING_KEY="") as app:
        tune_gc_for_service()
        try:
            yield app
        finally:
            gc.unfreeze()
            gc.set_threshold(*thresholds)


def chain_problems(app: EdgeApp, chain_file: Path | None) -> list[str]:
    """Why the chain in force is not the one asked for (empty when it is)."""
    current = app.rules.current()
    if chain_file is None:
        return [] if current is None else [f"a chain is in force without rules.file: "
                                           f"{current.source}"]
    want = f"file:{chain_file}"
    if current is None or current.source != want:
        refusal = app.rules.last_refusal
        why = "; ".join(refusal.problems) if refusal is not None else "no refusal recorded"
        return [f"the chain {chain_file.name} is not in force ({why})"]
    return []


def node_counts(app: EdgeApp) -> list[dict[str, Any]]:
    """The chain in force's nodes with their counts (the status's ``nodes``)."""
    return list(app.rules.snapshot()["nodes"])


def total_events(app: EdgeApp) -> int:
    from edge_sync.storage.event_log import EventLog

    with app.store.read() as txn:
        return EventLog(app.store).counts(txn).total


# -- ingest, with and without the chain ------------------------------------------------------------


def ingest_batches(batch: int, count: int = 1024) -> list[tuple[Entry, ...]]:
    """``count`` batches of ``batch`` entries ``{"temperature": t}``, t from -40 to 59, each
    entry with its own timestamp. Enough of them that a device does not post a timestamp twice
    while the chain is measured (each posting thread gives its devices the batches in turn, so
    a device gets ``count / threads`` of them): a point posted again with the same timestamp
    replaces the one the chain kept locally (a read, a decode and an index delete more), which
    real telemetry seldom does."""
    return [tuple((_TS0 + k * batch + i, (("temperature", (k * batch + i) % 100 - 40),))
                  for i in range(batch)) for k in range(count)]


@dataclass
class IngestRun:
    eps: float = math.nan
    posted: int = 0
    errors: list[str] = field(default_factory=list)


def measure_ingest(opts: Options, workdir: Path, chain_file: Path | None, *,
                   label: str | None = None, transformed: bool = True) -> IngestRun:
    """Entries/s committed through post_entries, with ``chain_file`` in force (or none).
    ``transformed``: the chain's last node pushes the transform's ``temperature_f`` (checked)."""
    out = IngestRun()
    label = label or ("chain" if chain_file is not None else "no chain")
    with chain_app(workdir, "ingest-", chain_file) as app:
        out.errors += chain_problems(app, chain_file)
        if out.errors:
            return out
        devices = create_devices(app, "bench", opts.devices)
        batches = ingest_batches(opts.batch)
        before = total_events(app)
        # one entry per device first: the shards compile the chain, each device is loaded
        for future in [app.service.post_entries(d, batches[0][:1]) for d in devices]:
            future.result(timeout=TAIL_S)
        out.eps, posted, tail_error = drive(app, opts, devices, batches)
        out.posted = posted + len(devices)
        if tail_error:
            out.errors.append(tail_error)
        else:
            out.errors += check_ingest(app, chain_file, out.posted, before, transformed)
    out.errors = [f"{label}: {e}" for e in out.errors]
    return out


def drive(app: EdgeApp, opts: Options, devices: Sequence[uuid.UUID],
          batches: Sequence[tuple[Entry, ...]]) -> tuple[float, int, str | None]:
    """(entries/s committed within ``opts.duration`` after ``opts.warmup``, entries posted in
    all, why the tail did not commit or None). The posts in flight when the time is up (the
    tail) are waited for, at most TAIL_S, so that the app stops idle."""
    tally = post_closed_loop(app.service.post_entries, devices, batches, threads=opts.threads,
                             window=opts.window, duration=opts.duration, warmup=opts.warmup,
                             tail_s=TAIL_S)
    tail_error = None
    if tally.uncommitted:
        tail_error = (f"{tally.uncommitted:,} entries posted before the end were not committed "
                      f"{TAIL_S:.0f} s later ({tally.committed:,} committed in the "
                      f"{opts.duration:g} s measured)")
    return tally.committed / opts.duration, tally.posted, tail_error


def check_ingest(app: EdgeApp, chain_file: Path | None, posted: int, before: int,
                 transformed: bool = True) -> list[str]:
    """Every posted entry is one queued event; with a chain, every node saw every entry and none
    failed, and (``transformed``) the last event carries the transform's field."""
    problems = []
    events = total_events(app) - before
    if events != posted:
        problems.append(f"{posted} entries posted, {events} events queued")
    if chain_file is None:
        return problems
    for node in node_counts(app):
        if node["in"] != posted or node["failed"]:
            problems.append(f"{node['node']}: in {node['in']}, failed {node['failed']} "
                            f"({posted} entries posted)")
    if not transformed:
        return problems
    from edge_sync.storage.event_log import EventLog

    with app.store.read() as txn:
        log = EventLog(app.store)
        last = log.get(txn, log.next_seq(txn) - 1)
    values = (last.body or {}).get("values", {}) if last is not None else {}
    want = values.get("temperature", 0) * 9 / 5 + 32
    if last is None or last.action != Action.TIMESERIES_UPDATED.value \
            or values.get("temperature_f") != want:
        problems.append(f"the last event is not the transform's output: "
                        f"{None if last is None else last.as_json()}")
    return problems


# -- aggregation -----------------------------------------------------------------------------------


def agg_value(key: str, device: int, window: int, i: int) -> int:
    """Message i of a device's window: integers, so the expected sums are exact."""
    base = 20 + device + 3 * window if key == "temperature" else 40 + 2 * device + window
    return base + i % 17


AGG_KEYS = ("humidity", "temperature")


def expected_summary(device: int, window: int, count: int) -> dict[str, Any]:
    """The AggregateNode's output of one device's window, as the event's values hold it."""
    out: dict[str, Any] = {}
    for key in AGG_KEYS:
        values = [agg_value(key, device, window, i) for i in range(count)]
        total = sum(values)
        out.update({f"{key}_min": min(values), f"{key}_max": max(values),
                    f"{key}_avg": total / count, f"{key}_sum": total, f"{key}_count": count})
    return out


@dataclass
class AggResult:
    messages_in: int = 0
    events_out: int = 0
    seconds: float = math.nan
    close_wait_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class SummaryWatch:
    """Reads the TIMESERIES_UPDATED events queued since it started, read-only, incrementally."""

    def __init__(self, app: EdgeApp) -> None:
        from edge_sync.storage.event_log import EventLog

        self.app = app
        self.log = EventLog(app.store)
        with app.store.read() as txn:
            self.after = self.log.next_seq(txn) - 1
        self.by_device: dict[uuid.UUID, list[dict[str, Any]]] = collections.defaultdict(list)
        self.total = 0

    def poll(self) -> int:
        with self.app.store.read() as txn:
            for event in self.log.iter_events(txn, after_seq=self.after):
                self.after = event.seq
                if event.action == Action.TIMESERIES_UPDATED.value:
                    self.by_device[event.entity_id].append(event.body)
                    self.total += 1
        return self.total

    def wait_for(self, total: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.poll() < total:
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)
        return True


def measure_aggregation(opts: Options, workdir: Path) -> AggResult:
    out = AggResult()
    n, windows, interval = opts.agg_per_window, opts.agg_windows, opts.agg_interval_s
    chain_file = write_chain(workdir / "aggregate_chain.json",
                             aggregate_chain(interval, max(n, 10_000)))
    with chain_app(workdir, "aggregate-", chain_file) as app:
        out.errors += chain_problems(app, chain_file)
        if out.errors:
            return out
        devices = create_devices(app, "agg", opts.agg_devices)
        watch = SummaryWatch(app)
        started = time.monotonic()
        for w in range(windows):
            t0 = time.monotonic()
            futures = [app.service.post_entries(dev, tuple(
                (_TS0 + w * n + i, tuple((k, agg_value(k, d, w, i)) for k in AGG_KEYS))
                for i in range(n))) for d, dev in enumerate(devices)]
            for future in futures:
                future.result(timeout=120)
                out.messages_in += n
            want = len(devices) * (w + 1)
            if not watch.wait_for(want, interval + _CLOSE_SLACK_S):
                out.errors.append(f"window {w + 1}: {watch.total} summaries queued after "
                                  f"{interval + _CLOSE_SLACK_S:.0f} s, {want} expected")
                break
            out.close_wait_s.append(time.monotonic() - t0)
            progress(f"  aggregation window {w + 1}/{windows}: {len(devices) * n:,} messages, "
                     f"{len(devices)} summaries queued {out.close_wait_s[-1]:.2f} s after "
                     f"the first post")
        out.seconds = time.monotonic() - started
        out.events_out = watch.poll()
        out.errors += check_summaries(watch, devices, opts)
        for node in node_counts(app):
            want_in = out.messages_in if node["type"] == "edge_sync.rules.AggregateNode" \
                else out.events_out
            if node["in"] != want_in or node["failed"]:
                out.errors.append(f"{node['node']}: in {node['in']}, failed "
                                  f"{node['failed']} ({want_in} expected, none failed)")
    return out


def check_summaries(watch: SummaryWatch, devices: Sequence[uuid.UUID], opts: Options) -> list[str]:
    """Each device has one summary per window, equal to what was posted in it."""
    problems = []
    for d, dev in enumerate(devices):
        got = watch.by_device.get(dev, [])
        if len(got) != opts.agg_windows:
            problems.append(f"device {d}: {len(got)} summaries, {opts.agg_windows} expected")
        for w, body in enumerate(got[: opts.agg_windows]):
            want = expected_summary(d, w, opts.agg_per_window)
            values = body.get("values") if isinstance(body, dict) else None
            if values != want:
                problems.append(f"device {d} window {w + 1}: summary {values}, expected {want}")
    return problems


# -- the benchmark ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="scripts/bench rules",
        description="Rule chains on the edge: in-process ingest with a 6-node chain vs none "
        "(alternating, same run), and the cloud traffic an aggregation chain saves (exact). "
        "Progress goes to stderr; the last stdout line is the JSON result.")
    p.add_argument("--runs", type=int, default=None,
                   help="ingest runs (each: no chain, then chain); medians (default 3, --quick 1)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per ingest measurement (default 3, --quick 1)")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds of posting before each ingest measurement, not counted (the "
                   "posts in flight fill up; default 1)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 run, 1 s per measurement, 2 aggregation windows of 2 s")
    p.add_argument("--only", choices=["all", "ingest", "aggregation"], default="all",
                   help="run only one of the two measurements")
    p.add_argument("--breakdown", action="store_true",
                   help="after the ingest runs, one more measurement each way with the agent's "
                   "functions timed (thread CPU per entry, bench/rules_breakdown.py), reported in "
                   "'breakdown'")
    p.add_argument("--floor", action="store_true",
                   help="in each ingest run, also measure a 1-node chain (push only) and a "
                   "2-node chain (save, push), reported in 'floor': what the engine and the "
                   "local save cost on their own")
    p.add_argument("--threads", type=int, default=4, help="ingest posting threads")
    p.add_argument("--window", type=int, default=32, help="outstanding futures per thread")
    p.add_argument("--batch", type=int, default=100, help="entries per ingest post")
    p.add_argument("--devices", type=int, default=16, help="ingest devices")
    p.add_argument("--agg-devices", type=int, default=10, help="aggregation devices")
    p.add_argument("--agg-per-window", type=int, default=1000,
                   help="messages per device per aggregation window (1..100000)")
    p.add_argument("--agg-windows", type=int, default=None,
                   help="aggregation windows per device (default 3, --quick 2)")
    p.add_argument("--agg-interval", type=int, default=None,
                   help="the AggregateNode's interval in whole seconds (default 5, --quick 2)")
    a = p.parse_args(list(argv))
    opts = Options(
        runs=a.runs if a.runs is not None else (1 if a.quick else 3),
        duration=a.duration if a.duration is not None else (1.0 if a.quick else 3.0),
        warmup=a.warmup,
        threads=a.threads, window=a.window, batch=a.batch, devices=a.devices,
        agg_devices=a.agg_devices, agg_per_window=a.agg_per_window,
        agg_windows=a.agg_windows if a.agg_windows is not None else (2 if a.quick else 3),
        agg_interval_s=a.agg_interval if a.agg_interval is not None else (2 if a.quick else 5),
        only=a.only, quick=a.quick, breakdown=a.breakdown, floor=a.floor)
    if opts.runs < 1 or opts.duration <= 0 or opts.warmup < 0:
        p.error("--runs and --duration must be positive, --warmup at least 0")
    if min(opts.threads, opts.window, opts.batch, opts.devices, opts.agg_devices,
           opts.agg_windows, opts.agg_interval_s) < 1:
        p.error("--threads, --window, --batch, --devices, --agg-devices, --agg-windows and "
                "--agg-interval must be at least 1")
    if not 1 <= opts.agg_per_window <= 100_000:
        p.error("--agg-per-window must be 1 to 100000 (the AggregateNode's maxPendingMsgs)")
    return opts


def breakdown(opts: Options, workdir: Path) -> dict[str, Any]:
    """One measurement without and one with the chain, the agent's functions timed
    (bench/rules_breakdown.py): µs of thread CPU per entry posted, by function; the rates of
    these two measurements are in ``eps`` (the timing slows them: not the benchmark's figures)."""
    from bench.rules_breakdown import cpu_per_label, per_entry

    chain_file = write_chain(workdir / "ingest_chain.json", INGEST_CHAIN)
    out: dict[str, Any] = {"eps": {}, "errors": []}
    for label, chain in (("no_chain", None), ("chain", chain_file)):
        with cpu_per_label() as seconds:
            try:
                result = measure_ingest(opts, workdir, chain)
            except Exception as exc:  # reported in the JSON line
                result = IngestRun(errors=[f"{label}: {exc!r}"])
        out["eps"][label] = rounded(result.eps, 0)
        out[label] = per_entry(seconds, result.posted)
        out["errors"] += result.errors
        progress(f"breakdown, {label}: " + ", ".join(
            f"{k} {v:.2f}" for k, v in list(out[label].items())[:8]) + " (µs/entry)")
    return out


def _ratios(plain: Sequence[float], chain: Sequence[float]) -> list[float]:
    """chain / no chain, run by run."""
    return [c / p if p > 0 else math.nan for p, c in zip(plain, chain, strict=True)]


def floor_figures(plain: Sequence[IngestRun],
                  floor: dict[str, list[IngestRun]]) -> dict[str, Any] | None:
    """``--floor``'s figures: per floor chain, its entries/s and its ratio to the no-chain rate
    of the same run (medians), each run in ``samples``; None without ``--floor``."""
    if not floor:
        return None
    no_chain = [r.eps for r in plain]
    out: dict[str, Any] = {}
    for name, runs in floor.items():
        eps = [r.eps for r in runs]
        ratios = _ratios(no_chain, eps)
        out[name] = {"nodes": len(FLOOR_CHAINS[name]["metadata"]["nodes"]),
                     "eps": rounded(median(eps), 0), "ratio": rounded(median(ratios), 3),
                     "samples": {"eps": [rounded(v, 0) for v in eps],
                                 "ratio": [rounded(v, 3) for v in ratios]}}
    return out


def result_line(opts: Options, plain: Sequence[IngestRun], chained: Sequence[IngestRun],
                agg: AggResult | None, machine: list[dict[str, float]],
                floor: dict[str, list[IngestRun]] | None = None) -> dict[str, Any]:
    floor = floor or {}
    no_chain = [r.eps for r in plain]
    chain = [r.eps for r in chained]
    ratios = _ratios(no_chain, chain)
    figures = {"ratio": median(ratios), "reduction": math.nan}
    a = agg or AggResult()
    if agg is not None and agg.events_out > 0:
        figures["reduction"] = agg.messages_in / agg.events_out
    floor_runs = [r for runs in floor.values() for r in runs]
    errors = [e for r in (*plain, *chained, *floor_runs) for e in r.errors] + a.errors
    return {
        "bench": "rules", "quick": opts.quick, "runs": opts.runs, "only": opts.only,
        "no_chain_eps": rounded(median(no_chain), 0), "chain_eps": rounded(median(chain), 0),
        "ratio": rounded(figures["ratio"], 3),
        "aggregation_in": a.messages_in if agg is not None else None,
        "aggregation_out": a.events_out if agg is not None else None,
        "reduction": rounded(figures["reduction"], 1),
        "aggregation_exact": (not a.errors) if agg is not None else None,
        "ingest": {"chain_nodes": INGEST_NODES, "duration_s": opts.duration,
                   "warmup_s": opts.warmup,
                   "threads": opts.threads, "window": opts.window, "batch": opts.batch,
                   "devices": opts.devices},
        "aggregation": {"devices": opts.agg_devices, "per_window": opts.agg_per_window,
                        "windows": opts.agg_windows, "interval_s": opts.agg_interval_s,
                        "seconds": rounded(a.seconds, 2),
                        "close_wait_s": [rounded(s, 2) for s in a.close_wait_s]},
        "samples": {"no_chain_eps": [rounded(v, 0) for v in no_chain],
                    "chain_eps": [rounded(v, 0) for v in chain],
                    "ratio": [rounded(v, 3) for v in ratios]},
        "floor": floor_figures(plain, floor),
        "targets": TARGETS,
        "met": {k: None if math.isnan(v) else v >= TARGETS[k] for k, v in figures.items()},
        "machine": machine, "cpus": os.cpu_count(), "errors": errors[:20],
    }


def ingest_runs(opts: Options, workdir: Path, plain: list[IngestRun],
                chained: list[IngestRun], floor: dict[str, list[IngestRun]]) -> None:
    """``opts.runs`` runs, each without then with the chain (then, with ``--floor``, with each
    of FLOOR_CHAINS, into ``floor``). After a measurement with an error the remaining runs are
    skipped (the run's lists are filled up with empty results, so that they stay in step): an
    agent whose posts did not commit may still be busy."""
    chain_file = write_chain(workdir / "ingest_chain.json", INGEST_CHAIN)
    plan: list[tuple[str, Path | None, list[IngestRun], bool]] = [
        ("no chain", None, plain, True), ("chain", chain_file, chained, True)]
    if opts.floor:
        for name, export in FLOOR_CHAINS.items():
            into = floor.setdefault(name, [])
            plan.append((f"floor {name}", write_chain(workdir / f"floor_{name}.json", export),
                         into, False))
    for run in range(1, opts.runs + 1):
        for label, chain, into, transformed in plan:
            cpu = CpuMeter(os.getpid())
            try:
                result = measure_ingest(opts, workdir, chain, label=label,
                                        transformed=transformed)
            except Exception as exc:  # reported in the JSON line
                result = IngestRun(errors=[f"{label}: {exc!r}"])
            result.errors = [f"run {run}, {e}" for e in result.errors]
            into.append(result)
            progress(f"run {run}/{opts.runs}: {label} {result.eps:,.0f} entries/s "
                     f"(cpu {cpu.percent():.0f}%, set-up included)")
            if result.errors:
                progress(f"run {run}/{opts.runs}: {result.errors[0]}; the remaining ingest "
                         "measurements are skipped")
                for _, _, others, _ in plan:
                    others.extend(IngestRun() for _ in range(run - len(others)))
                return
        if plain[-1].eps > 0:
            progress(f"run {run}/{opts.runs}: ratio " + ", ".join(
                f"{label} {into[-1].eps / plain[-1].eps:.3f}" for label, _, into, _ in plan[1:]))


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    progress(f"rules: {opts.runs} ingest run(s) of {opts.warmup:g} + {opts.duration:g} s "
             "without and with a "
             f"{INGEST_NODES}-node chain; aggregation of {opts.agg_per_window:,} messages per "
             f"device per {opts.agg_interval_s} s window, {opts.agg_devices} devices, "
             f"{opts.agg_windows} windows ({os.cpu_count()} cpus)")
    machine = [machine_load()]
    plain: list[IngestRun] = []
    chained: list[IngestRun] = []
    floor: dict[str, list[IngestRun]] = {}
    agg: AggResult | None = None
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        workdir = Path(tmp)
        if opts.only in ("all", "ingest"):
            ingest_runs(opts, workdir, plain, chained, floor)
        if opts.only in ("all", "aggregation"):
            try:
                agg = measure_aggregation(opts, workdir)
            except Exception as exc:  # reported in the JSON line
                agg = AggResult(errors=[f"aggregation: {exc!r}"])
        split = (breakdown(opts, workdir) if opts.breakdown and opts.only != "aggregation"
                 else None)
    machine.append(machine_load())
    line = result_line(opts, plain, chained, agg, machine, floor)
    if split is not None:
        line["breakdown"] = split
        line["errors"] += [f"breakdown: {e}" for e in split.pop("errors")]
    emit(line)
    progress(f"ratio {line['ratio']} (target {TARGETS['ratio']}), reduction {line['reduction']} "
             f"(target {TARGETS['reduction']:.0f}): {line['aggregation_in']} messages -> "
             f"{line['aggregation_out']} cloud events")
    code = 0
    if line["errors"]:
        progress("FAILED: " + "; ".join(line["errors"][:5]))
        code = 1
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.current_thread() and t.is_alive() and not t.daemon]
    if lingering:
        # an agent whose posts did not commit does not stop (its shards still work through
        # them): the interpreter would wait for its threads at exit, for as long as that takes
        progress(f"threads of a stopped agent still run ({', '.join(sorted(lingering)[:5])}): "
                 "exiting without waiting for them")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
