"""Stream settings for tests that prove a change reaches a connected edge because the call that
queued it woke the edge's stream: the settings a CloudServer derives from its config, except
that an idle stream looks at its queue on its own only once an hour (LinkSettings.poll_interval_s,
1 s by default). Within a test's deadline only the wake can then deliver a downlink.

    server = CloudServer(cfg, link=wake_only(cfg)).start()
"""

from __future__ import annotations

from edge_sync.cloud.session import LinkSettings
from edge_sync.config import CloudConfig

__all__ = ["NO_POLL_S", "wake_only"]

NO_POLL_S = 3600.0


def wake_only(cfg: CloudConfig) -> LinkSettings:
    """As edge_sync.cloud.server.CloudServer derives them from ``cfg``, polling an hour apart."""
    return LinkSettings(
        max_inbound_message_size=cfg.rpc.max_inbound_message_size,
        resend_timeout_s=cfg.downlink.resend_timeout_ms / 1000,
        max_attempts=cfg.downlink.max_attempts,
        poll_interval_s=NO_POLL_S,
    )
