"""Which uplink failure answers are transient, for a peer that gives no retry hint.

A ThingsBoard server answers a failed UplinkMsg with ``success=false`` and the root cause in
``errorMsg``, and never says whether a retry could help (no ``retryable``, no
``rejectedEdgeSeqId``). The edge then reads the text: an errorMsg containing one of
``TRANSIENT_ERROR_PATTERNS`` (case-insensitive substring) is a failure of the moment (rate limit,
timeout, a service unavailable), resent with backoff and never held against the message's events;
any other text counts against the message (docs/link-protocol.md, "Uplink"). An explicit
``retryable`` field, when the peer sends one, decides instead.
"""

from __future__ import annotations

TRANSIENT_ERROR_PATTERNS: tuple[str, ...] = (
    "rate limit",  # ThingsBoard: "Failed to process uplink message. Rate limit reached"
    "timeout",  # TimeoutException, "... timeout ..."
    "timed out",  # "request timed out after 30000ms"
    "unavailable",  # gRPC UNAVAILABLE, "Service Unavailable"
    "deadline exceeded",  # gRPC DEADLINE_EXCEEDED
    "too many requests",
    "temporarily",  # "temporarily unavailable", "temporarily overloaded"
    "connection reset",
    "connection refused",
    "connection is not available",  # a database pool exhausted (HikariCP)
)
"""Lower-case substrings of errorMsg that mark a failure as transient."""


def is_transient(error: str) -> bool:
    """Whether a failure answer's errorMsg names a transient cause (see the module docstring).

    ThingsBoard's errorMsg is the root cause's message, then its stack frames, one per line:
    only the message is read, since a permanent error's frames may well name a class or method
    such as ``...withTimeout``. A cause without a message (the first line empty) is known only
    by its frames, so then those are read."""
    message, _, frames = error.partition("\n")
    text = (message if message.strip() else frames).lower()
    return any(pattern in text for pattern in TRANSIENT_ERROR_PATTERNS)
