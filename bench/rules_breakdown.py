"""``scripts/bench rules --breakdown``: where the ingest's CPU goes, per entry, in the agent's own
functions, with and without the chain.

While a measurement runs, the functions below are wrapped so that each call adds the CPU time its
thread spent in it (``time.thread_time``: a thread waiting for the interpreter lock or for a lock
is not counted, a script running in QuickJS without the lock is) to a counter of its label; the
wrappers are removed afterwards. Calls nest (``entity.handle`` holds ``rules.chain``, which holds
``rules.engine`` ...), so the labels are not to be summed: each is the whole of its function.
``rules.node[i]`` is node i's batch (its script included), ``rules.js`` the script calls alone,
``queue.*`` the QueueActor's work for the Appends (one write transaction per group of them).
A counter's figure is its CPU seconds / the entries posted, in µs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

Wrapped = tuple[Any, str, str]
"""(owner object, attribute name, label)"""


def _targets() -> list[Wrapped]:
    from edge_sync.actors import entity, queue_actor
    from edge_sync.rules import engine, session

    return [
        (entity.EntityActor, "handle", "entity.handle"),
        (entity.EntityActor, "_run_chain", "rules.chain"),
        (entity, "telemetry_msgs", "rules.messages"),
        (entity, "plan", "rules.plan"),
        (session.EntityRules, "on_messages", "rules.session"),
        (engine.RuleEngine, "run_many", "rules.engine"),
        (queue_actor.QueueActor, "on_receive", "queue.receive"),
        (queue_actor.QueueActor, "_append", "queue.append"),
        (queue_actor.QueueActor, "_mutate", "queue.mutations"),
    ]


@contextlib.contextmanager
def cpu_per_label() -> Iterator[defaultdict[str, float]]:
    """Within the block, the thread CPU seconds spent in each wrapped function, by label."""
    from edge_sync.rules import engine, sandbox

    seconds: defaultdict[str, float] = defaultdict(float)
    lock = threading.Lock()

    def counted(fn: Callable[..., Any], label: str | Callable[..., str]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                name = label if isinstance(label, str) else label(*args)
                with lock:
                    seconds[name] += spent
        return call

    originals: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str | Callable[..., str]) -> None:
        original = getattr(owner, name)
        originals.append((owner, name, original))
        setattr(owner, name, counted(original, label))

    build = sandbox.ScriptEngine._build

    def build_counted(self: sandbox.ScriptEngine) -> None:  # the script calls, once compiled
        build(self)
        self._run_many = counted(self._run_many, "rules.js")
        self._run = counted(self._run, "rules.js")

    try:  # whatever was wrapped is put back, also when wrapping fails half-way
        for owner, name, label in _targets():
            wrap(owner, name, label)
        wrap(engine.RuleEngine, "_visit_many",
             lambda _self, index, _tokens: f"rules.node[{index}]")
        originals.append((sandbox.ScriptEngine, "_build", build))
        sandbox.ScriptEngine._build = counted(  # type: ignore[method-assign]
            build_counted, "rules.compile")
        yield seconds
    finally:
        for owner, name, original in reversed(originals):
            setattr(owner, name, original)


def per_entry(seconds: dict[str, float], entries: int) -> dict[str, float]:
    """µs of thread CPU per entry by label, the largest first."""
    if entries <= 0:
        return {}
    return {label: round(value / entries * 1e6, 2)
            for label, value in sorted(seconds.items(), key=lambda kv: -kv[1])}
