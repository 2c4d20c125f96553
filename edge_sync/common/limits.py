"""Limits the edge and the reference cloud share on the wire, each defined once."""

from __future__ import annotations

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest gRPC message a peer accepts unless configured otherwise (gRPC's own default):
the default of both ``max_inbound_message_size`` settings, and the limit the edge assumes for a
cloud that announces none (a ConnectResponseMsg without maxInboundMessageSize)."""
