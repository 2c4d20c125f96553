"""The project's one error family, rooted in EdgeSyncError.

Library errors (lmdb.Error, grpc.RpcError, yaml.YAMLError) are converted to these at the module
boundary with ``raise ... from``, so callers only ever catch the project's own types.
"""

from __future__ import annotations


class EdgeSyncError(Exception):
    """Root of every error edge-sync raises on purpose."""


class ConfigError(EdgeSyncError):
    """A configuration file or value is unusable. Exit code 1 at start-up."""


class StorageError(EdgeSyncError):
    """The LMDB store cannot be opened, read or written. Exit code 4 at start-up."""


class StorageCorrupt(StorageError):
    """The store exists but its content is not what edge-sync wrote (or not LMDB at all)."""


class QueueFull(StorageError):
    """The store reached its configured size cap (or the disk is full): new data is refused."""


class TransportError(EdgeSyncError):
    """The cloud link failed (converted from grpc.RpcError)."""


class Unavailable(EdgeSyncError):
    """A component is restarting or stopping; the request was not accepted and may be retried."""


class BadRequest(EdgeSyncError):
    """Input from a device or an operator is malformed; the message says what is wrong."""


class Unauthorized(EdgeSyncError):
    """An unknown device access token."""


class NotFound(EdgeSyncError):
    """An entity the request names does not exist."""


class InjectedFault(EdgeSyncError):
    """Raised by an actor told to crash through the admin API's fault injection (tests only)."""
