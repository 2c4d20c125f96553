"""The reference cloud (`edge-cloud serve`): a gRPC server speaking ThingsBoard's edge protocol
with edge-sync's extensions (docs/link-protocol.md), its own LMDB store and an admin HTTP API.

Public surface: `CloudServer` (start/stop, ports, ``service``), `CloudService` (operations),
`CloudStore` and `open_cloud_store`, `LinkSettings` (stream timeouts).
"""

from edge_sync.cloud.server import CloudServer, open_cloud_store
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.session import LinkSettings
from edge_sync.cloud.store import CloudStore

__all__ = ["CloudServer", "CloudService", "CloudStore", "LinkSettings", "open_cloud_store"]
