"""The rule engine's message: a frozen, TbMsg-like value (type, originator, data, metadata, ts)
that flows through a rule chain. Owns the message shape only; routing is ``engine.py``'s.

Types are ThingsBoard's message type names (``POST_TELEMETRY_REQUEST``,
``POST_ATTRIBUTES_REQUEST``, ``ALARM``, ...). ``data`` is a JSON value; ``metadata`` maps text
to text, as TbMsgMetaData does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

POST_TELEMETRY_REQUEST = "POST_TELEMETRY_REQUEST"
POST_ATTRIBUTES_REQUEST = "POST_ATTRIBUTES_REQUEST"
TO_SERVER_RPC_REQUEST = "TO_SERVER_RPC_REQUEST"
ATTRIBUTES_UPDATED = "ATTRIBUTES_UPDATED"
ATTRIBUTES_DELETED = "ATTRIBUTES_DELETED"
ALARM = "ALARM"


@dataclass(frozen=True, slots=True)
class Originator:
    """The entity a message is about: ThingsBoard entity type (``DEVICE``) and id."""

    entity_type: str
    id: str


@dataclass(frozen=True, slots=True)
class RuleMsg:
    """One message: its type, originator, JSON data, text metadata and timestamp (ms)."""

    type: str
    originator: Originator
    data: Any
    metadata: Mapping[str, str] = field(default_factory=dict)
    ts: int = 0

    def __post_init__(self) -> None:
        meta = {str(k): str(v) for k, v in self.metadata.items()}
        object.__setattr__(self, "metadata", MappingProxyType(meta))

    def metadata_dict(self) -> dict[str, str]:
        """A mutable copy of the metadata (for scripts)."""
        return dict(self.metadata)

    def with_changes(self, *, type: str | None = None, data: Any = None,
                     metadata: Mapping[str, Any] | None = None, keep_data: bool = False) -> RuleMsg:
        """A copy with a new type, data and/or metadata (``keep_data`` keeps the data)."""
        # the constructor, not dataclasses.replace (several µs a call): same __post_init__
        return RuleMsg(self.type if type is None else type, self.originator,
                       self.data if keep_data else data,
                       self.metadata if metadata is None else metadata, self.ts)
