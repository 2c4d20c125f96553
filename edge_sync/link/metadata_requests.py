"""Rule chains the edge holds without their metadata (neither applied nor held), reported once
per chain and version of it in this process through the DownlinkActor's ``request_metadata``
callback (wired to the uplink event that asks the cloud for it: RULE_CHAIN_METADATA_REQUEST).
The DownlinkActor asks at start and after every SyncCompletedMsg.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from loguru import logger

from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore, held_entity_key

_log = logger.bind(component="downlink")


class MissingMetadata:
    """One thread (the DownlinkActor's)."""

    def __init__(self, store: LmdbStore, graph: GraphStore,
                 request: Callable[[uuid.UUID], None] | None) -> None:
        self._store = store
        self._graph = graph
        self._request = request
        self._asked: dict[uuid.UUID, int] = {}  # chain -> its updated_ms when asked

    def ask(self) -> None:
        """Every rule chain on the edge without its metadata (applied or held), once per chain
        and version of it in this process, through ``request``."""
        if self._request is None:
            return
        graph = self._graph
        with self._store.read() as txn:
            missing = [c for c in graph.entities(txn, entity_type="RULE_CHAIN")
                       if graph.entity(txn, c.id, "RULE_CHAIN_METADATA") is None
                       and not graph.is_held(txn, held_entity_key("RULE_CHAIN_METADATA", c.id))]
        for chain in missing:
            if self._asked.get(chain.id) == chain.updated_ms:
                continue
            self._asked[chain.id] = chain.updated_ms
            _log.bind(entity_type="RULE_CHAIN", entity_id=str(chain.id)).info(
                "rule chain {} ({}) has no metadata on the edge: asking the cloud for it",
                chain.id, chain.name)
            try:
                self._request(chain.id)
            except Exception as exc:  # the request is the caller's; the actor goes on
                _log.bind(entity_id=str(chain.id), error=str(exc)).warning(
                    "rule chain metadata request for {} failed: {}", chain.id, exc)
                self._asked.pop(chain.id, None)
