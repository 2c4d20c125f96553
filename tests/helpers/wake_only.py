"""Stream settings for tests that prove a change reaches a connected edge because the call that
queued it woke the edge's stream: the settings a CloudServer derives from its config, except
that an idle stream looks at its queue on its own only once an hour (LinkSettings.poll_interval_s,
1 s by default). Within a test's deadline only the wake can then deliver a downlink.

    server = CloudServer(cfg, link=wake_only(cfg)).start()
"""

from __future__ import annotations

import dataclasses

from edge_sync.cloud.session import LinkSettings
from edge_sync.config import CloudConfig

__all__ = ["NO_POLL_S", "wake_only"]

NO_POLL_S = 3600.0


def wake_only(cfg: CloudConfig) -> LinkSettings:
    """The settings CloudServer derives from ``cfg``, polling an hour apart."""
    return dataclasses.replace(LinkSettings.from_config(cfg), poll_interval_s=NO_POLL_S)
