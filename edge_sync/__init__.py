"""edge-sync: an edge-to-cloud synchronisation agent speaking ThingsBoard's edge gRPC protocol.

This module owns the public surface for code that embeds the edge::

    from edge_sync import EdgeApp, load_edge_config

    app = EdgeApp(load_edge_config())
    app.start()
    seqs = app.service.post_telemetry(token, {"temperature": 21.5}).result()

plus the error types every public call raises (all rooted in EdgeSyncError) and __version__,
read from the installed package's metadata. The error types are imported at once (they cost
nothing); EdgeApp, the configuration loader and __version__ on first use, so importing the
package (the CLI does, for --help too) loads neither grpc, aiohttp, LMDB nor YAML.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge_sync.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    EdgeSyncError,
    InternalError,
    NotFound,
    QueueFull,
    StorageCorrupt,
    StorageError,
    Unauthorized,
    Unavailable,
    Unstorable,
)

if TYPE_CHECKING:
    from edge_sync.app import EdgeApp
    from edge_sync.config import EdgeConfig, load_edge_config

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "EdgeApp",
    "EdgeConfig",
    "EdgeSyncError",
    "InternalError",
    "NotFound",
    "QueueFull",
    "StorageCorrupt",
    "StorageError",
    "Unauthorized",
    "Unavailable",
    "Unstorable",
    "__version__",
    "load_edge_config",
]

_LAZY = {
    "EdgeApp": "edge_sync.app",
    "EdgeConfig": "edge_sync.config",
    "load_edge_config": "edge_sync.config",
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-sync")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
