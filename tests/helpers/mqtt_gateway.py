"""A ThingsBoard gateway on a real MQTT 3.1.1 client (paho-mqtt): a device whose connection
speaks for other devices on the ``v1/gateway/...`` topics. On top of MqttDevice (CONNACK,
PUBACKs, SUBACK codes, what the server published, a closed connection): publish and wait for
the PUBACK, and wait for the n-th message on a topic that matches.

And two ways to see the agent in process at a given moment: ``held_commits`` keeps LMDB's one
writer, as another writer of the store would (every commit of the agent waits until the block
ends, reads go on), so a creation or a delivery is pending for as long as a test needs;
``Logs`` records what the agent logs, so a test waits for a step to have happened.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import lmdb
from loguru import logger

from edge_sync.storage.env import LmdbStore
from tests.helpers.mqtt_device import MqttDevice
from tests.helpers.wait import wait_until

CONNECT = "v1/gateway/connect"
DISCONNECT = "v1/gateway/disconnect"
TELEMETRY = "v1/gateway/telemetry"
ATTRIBUTES = "v1/gateway/attributes"
ATTRIBUTES_REQUEST = "v1/gateway/attributes/request"
ATTRIBUTES_RESPONSE = "v1/gateway/attributes/response"
RPC = "v1/gateway/rpc"

DEADLINE_S = 10.0


class MqttGateway(MqttDevice):
    def __enter__(self) -> MqttGateway:
        return self

    def send(self, topic: str, body: Any, *, timeout: float = DEADLINE_S) -> int:
        """Publish at QoS 1 and wait for its PUBACK; its message id. AssertionError when the
        server closed the connection instead."""
        mid = self.publish(topic, body).mid
        wait_until(lambda: mid in self.acked_ids() or self.disconnected.is_set(),
                   timeout=timeout, what=f"PUBACK of {topic}")
        assert mid in self.acked_ids(), f"{topic}: connection closed without a PUBACK"
        return mid

    def refused(self, topic: str, body: Any, *, timeout: float = DEADLINE_S) -> int:
        """Publish at QoS 1 and wait for the server to close the connection; its message id
        (AssertionError when it was acknowledged instead)."""
        mid = self.publish(topic, body).mid
        wait_until(self.disconnected.is_set, timeout=timeout, what=f"connection closed on {topic}")
        assert mid not in self.acked_ids(), f"{topic}: acknowledged, then closed"
        return mid

    def bodies(self, topic: str) -> list[Any]:
        with self._lock:
            return [body for t, body in self.messages if t == topic]

    def wait_for(self, topic: str, match: Callable[[Any], bool] = lambda _b: True, *,
                 timeout: float = DEADLINE_S) -> Any:
        """The first message on ``topic`` that ``match``es."""
        def found() -> list[Any]:
            return [b for b in self.bodies(topic) if match(b)][:1]
        return wait_until(found, timeout=timeout, what=f"a matching message on {topic}",
                          show=lambda: self.bodies(topic))[0]


@contextlib.contextmanager
def held_commits(store: LmdbStore, then: Callable[[lmdb.Transaction], None] | None = None,
                 ) -> Iterator[None]:
    """Hold the store's writer until the block ends: the agent's commits wait (its reads go
    on). ``then`` runs in the held transaction as the block ends, before it commits (what
    another writer, the cloud's downlinks, could have written meanwhile)."""
    holding, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold(txn: lmdb.Transaction) -> None:
        holding.set()
        release.wait(60.0)
        if then is not None:
            then(txn)

    def run() -> None:
        try:
            store.write(hold, maintenance=True)
        except BaseException as exc:  # reported by the block's end
            failure.append(exc)
            holding.set()

    thread = threading.Thread(target=run, name="held-commits", daemon=True)
    thread.start()
    assert holding.wait(DEADLINE_S), "the store's writer could not be taken"
    try:
        yield
    finally:
        release.set()
        thread.join(DEADLINE_S)
    assert not thread.is_alive(), "the held transaction did not end"
    if failure:
        raise failure[0]


class Logs:
    """What the agent in this process logs (DEBUG and up), as loguru records."""

    def __init__(self) -> None:
        self.records: list[Any] = []
        self._sink = logger.add(lambda m: self.records.append(m.record), level="DEBUG",
                                format="{message}", catch=False)

    def close(self) -> None:
        logger.remove(self._sink)

    def matching(self, text: str, **extra: str) -> list[Any]:
        """Records whose message holds ``text`` and whose extras include ``extra``."""
        return [r for r in list(self.records) if text in r["message"]
                and all(r["extra"].get(k) == v for k, v in extra.items())]

    def wait_for(self, text: str, *, timeout: float = DEADLINE_S, **extra: str) -> Any:
        """The first record whose message holds ``text`` (and extras ``extra``)."""
        return wait_until(lambda: self.matching(text, **extra)[:1], timeout=timeout,
                          what=f"a log line with {text!r}")[0]
