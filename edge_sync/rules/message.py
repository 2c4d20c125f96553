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

_set = object.__setattr__  # RuleMsg.of_text: a frozen dataclass's fields, set once

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

    @classmethod
    def of_text(cls, type: str, originator: Originator, data: Any,
                metadata: Mapping[str, str], ts: int) -> RuleMsg:
        """A message whose metadata is text already (every key and value a ``str``), taken as
        it is, without the constructor's conversion. For the hot paths: a device's message, a
        copy of a message. A dict is wrapped, never copied: the caller gives it up and never
        changes it again. A read-only proxy is kept as it is: pass only another message's
        ``metadata``, whose text the constructor made sure of."""
        msg = object.__new__(cls)
        _set(msg, "type", type)
        _set(msg, "originator", originator)
        _set(msg, "data", data)
        if not isinstance(metadata, MappingProxyType):  # a message's own is one already
            metadata = MappingProxyType(metadata if isinstance(metadata, dict)
                                        else dict(metadata))
        _set(msg, "metadata", metadata)
        _set(msg, "ts", ts)
        return msg

    def metadata_dict(self) -> dict[str, str]:
        """A mutable copy of the metadata (for scripts)."""
        # the proxy's copy() is its dict's: dict(proxy) goes key by key (five times slower)
        copied: dict[str, str] = self.metadata.copy()  # type: ignore[attr-defined]
        return copied

    def with_changes(self, *, type: str | None = None, data: Any = None,
                     metadata: Mapping[str, Any] | None = None, keep_data: bool = False) -> RuleMsg:
        """A copy with a new type, data and/or metadata (``keep_data`` keeps the data)."""
        # the constructor, not dataclasses.replace (several µs a call): same __post_init__;
        # the metadata kept as it is needs no conversion
        if metadata is None:
            return RuleMsg.of_text(self.type if type is None else type, self.originator,
                                   self.data if keep_data else data, self.metadata, self.ts)
        return RuleMsg(self.type if type is None else type, self.originator,
                       self.data if keep_data else data, metadata, self.ts)
