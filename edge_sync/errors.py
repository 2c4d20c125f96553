"""The project's one error family, rooted in EdgeSyncError: every error edge-sync raises on
purpose, for the edge and the reference cloud alike.

Library errors (lmdb.Error, grpc.RpcError, yaml.YAMLError) are converted to these at the module
boundary with ``raise ... from``, so callers only ever catch the project's own types. The HTTP
status each one maps to is in common/http_errors.py.
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


class Unavailable(EdgeSyncError):
    """A component is restarting or stopping; the request was not accepted and may be retried."""


class Restarting(Unavailable):
    """Unavailable because the actor the request is for is not running (restarting, stopped):
    refused at once, for as long as that lasts, at the devices' rate. Its run is logged by the
    Address and the supervisor (when it began, how many, when it ended), not per request."""


class InternalError(EdgeSyncError):
    """Something failed that should not have (a bug): the request was not carried out, the
    component that failed is restarted. HTTP 500."""


class BadRequest(EdgeSyncError):
    """Input from a device or an operator is malformed; the message says what is wrong."""


class Conflict(BadRequest):
    """A unique name, token, id or routing key is already taken."""


class Unstorable(BadRequest):
    """A value the store's encoding cannot hold (an integer beyond 64 bits, text with a lone
    surrogate, a type msgpack does not know): refused, nothing of it is written."""


class PayloadRejected(BadRequest):
    """The cloud refused one uplink payload; ``seq`` is its edgeSeqId when it had one."""

    def __init__(self, message: str, seq: int | None) -> None:
        super().__init__(message)
        self.seq = seq


class Unauthorized(EdgeSyncError):
    """An unknown device access token."""


class NotFound(EdgeSyncError):
    """An entity the request names does not exist."""


class IllegalTransition(EdgeSyncError):
    """The link's state machine was asked for a transition it does not allow (a bug)."""


class SupervisorGaveUp(EdgeSyncError):
    """A supervisor exceeded its restart intensity, stopped its children and exited (code 3)."""


class InjectedFault(EdgeSyncError):
    """Raised by an actor told to crash through the admin API's fault injection (tests only)."""
