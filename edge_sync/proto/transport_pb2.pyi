from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BOOLEAN_V: _ClassVar[KeyValueType]
    LONG_V: _ClassVar[KeyValueType]
    DOUBLE_V: _ClassVar[KeyValueType]
    STRING_V: _ClassVar[KeyValueType]
    JSON_V: _ClassVar[KeyValueType]
BOOLEAN_V: KeyValueType
LONG_V: KeyValueType
DOUBLE_V: KeyValueType
STRING_V: KeyValueType
JSON_V: KeyValueType

class KeyValueProto(_message.Message):
    __slots__ = ("key", "type", "bool_v", "long_v", "double_v", "string_v", "json_v")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BOOL_V_FIELD_NUMBER: _ClassVar[int]
    LONG_V_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_V_FIELD_NUMBER: _ClassVar[int]
    STRING_V_FIELD_NUMBER: _ClassVar[int]
    JSON_V_FIELD_NUMBER: _ClassVar[int]
    key: str
    type: KeyValueType
    bool_v: bool
    long_v: int
    double_v: float
    string_v: str
    json_v: str
    def __init__(self, key: _Optional[str] = ..., type: _Optional[_Union[KeyValueType, str]] = ..., bool_v: _Optional[bool] = ..., long_v: _Optional[int] = ..., double_v: _Optional[float] = ..., string_v: _Optional[str] = ..., json_v: _Optional[str] = ...) -> None: ...

class TsKvListProto(_message.Message):
    __slots__ = ("ts", "kv")
    TS_FIELD_NUMBER: _ClassVar[int]
    KV_FIELD_NUMBER: _ClassVar[int]
    ts: int
    kv: _containers.RepeatedCompositeFieldContainer[KeyValueProto]
    def __init__(self, ts: _Optional[int] = ..., kv: _Optional[_Iterable[_Union[KeyValueProto, _Mapping]]] = ...) -> None: ...

class PostTelemetryMsg(_message.Message):
    __slots__ = ("tsKvList",)
    TSKVLIST_FIELD_NUMBER: _ClassVar[int]
    tsKvList: _containers.RepeatedCompositeFieldContainer[TsKvListProto]
    def __init__(self, tsKvList: _Optional[_Iterable[_Union[TsKvListProto, _Mapping]]] = ...) -> None: ...

class PostAttributeMsg(_message.Message):
    __slots__ = ("kv", "shared")
    KV_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    kv: _containers.RepeatedCompositeFieldContainer[KeyValueProto]
    shared: bool
    def __init__(self, kv: _Optional[_Iterable[_Union[KeyValueProto, _Mapping]]] = ..., shared: _Optional[bool] = ...) -> None: ...
