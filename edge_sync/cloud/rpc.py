"""Server-side RPC on the reference cloud, as pure logic: the request body of ThingsBoard's
`POST /api/rpc/{oneway|twoway}/{deviceId}` checked, the record of one request and its
statuses (ThingsBoard's RpcStatus), the transitions (the stream sends it, the edge
acknowledges it, an answer comes, it expires) and the HTTP answer for a finished request.

Statuses (ThingsBoard's names; docs/reference-cloud.md "Server-side RPC"):
  QUEUED      in the edge's durable downlink queue
  SENT        sent to the edge on its stream, not acknowledged yet (kept in memory, not
              written: the stored status stays QUEUED until the edge's acknowledgement, which is
              what a restarted cloud resends; see `as_sent`)
  DELIVERED   the edge acknowledged it (holds it durably and delivers it to the device); a
              one-way request ends here, as in ThingsBoard, unless the edge answers it
  SUCCESSFUL  answered with the device's response
  FAILED      answered with an error, or refused by the edge until it was parked
  TIMEOUT     a non-persistent two-way request sent and not answered by its expirationTime,
              or the edge answered TIMEOUT
  EXPIRED     its expirationTime passed before it was sent (it never is), a persistent two-way
              request not answered by then, or the edge answered that it expired
  DELETED     deleted by the operator (DELETE /api/rpc/persistent/{rpcId}) before it was final
A request is final in SUCCESSFUL, FAILED, TIMEOUT, EXPIRED and DELETED: nothing changes it
after that. Past its expirationTime a request takes its expiry status (see `expired`): the
edge's own report of the expiry (error TIMEOUT, as ThingsBoard Edge sends it at the deadline)
settles it so, and a response that comes after the deadline is late: it does not make the
request SUCCESSFUL (ThingsBoard drops a stale answer the same way).
"""

from __future__ import annotations

import enum
import json
import math
import uuid
from dataclasses import dataclass, replace
from typing import Any

from edge_sync.errors import BadRequest
from edge_sync.validators import MAX_NAME_BYTES, is_int64, text_fits

DEFAULT_TIMEOUT_MS = 10_000
"""ThingsBoard's default (server.rest.server_side_rpc.default_timeout)."""
MIN_TIMEOUT_MS = 100
MAX_TIMEOUT_MS = 600_000
"""The longest a non-persistent request may wait (its REST call waits that long)."""
MAX_PARAMS_BYTES = 64 * 1024
MAX_RESPONSE_CHARS = 64 * 1024
"""An answer's response or error is kept up to this many characters."""
MAX_REQUEST_ID = 2**31 - 1
BODY_FIELDS = frozenset({"method", "params", "timeout", "expirationTime", "persistent",
                         "retries", "additionalInfo"})


class RpcStatus(enum.StrEnum):
    QUEUED = "QUEUED"
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    SUCCESSFUL = "SUCCESSFUL"
    TIMEOUT = "TIMEOUT"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"
    DELETED = "DELETED"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({RpcStatus.SUCCESSFUL, RpcStatus.TIMEOUT, RpcStatus.EXPIRED,
                    RpcStatus.FAILED, RpcStatus.DELETED})

ANSWER_ERRORS = {"TIMEOUT": RpcStatus.TIMEOUT, "EXPIRED": RpcStatus.EXPIRED}
"""An answer's error that names the request's fate rather than a failure (our edge reports an
expired request as EXPIRED; ThingsBoard's RpcError TIMEOUT); any other error is FAILED."""


@dataclass(frozen=True, slots=True)
class RpcCall:
    """A checked request body."""

    method: str
    params: Any
    oneway: bool
    persistent: bool
    expiration_time: int
    timeout_ms: int
    retries: int | None = None
    additional_info: Any = None


@dataclass(frozen=True, slots=True)
class RpcRecord:
    """One server-side RPC request as the cloud keeps it (durably, in its store)."""

    id: uuid.UUID
    edge_id: uuid.UUID
    device_id: uuid.UUID
    request_id: int
    method: str
    params: Any
    oneway: bool
    persistent: bool
    expiration_time: int
    created_time: int
    status: RpcStatus
    updated_time: int
    response: str | None = None
    """The device's response (JSON text, as the edge sent it), for SUCCESSFUL."""
    error: str | None = None
    retries: int | None = None
    additional_info: Any = None
    downlink: int = 0
    """The number of its downlink in the edge's queue (0: none was queued)."""

    def with_status(self, status: RpcStatus, now_ms: int, *, response: str | None = None,
                    error: str | None = None) -> RpcRecord:
        return replace(self, status=status, updated_time=now_ms,
                       response=response if response is not None else self.response,
                       error=error if error is not None else self.error)

    def as_json(self, tenant_id: uuid.UUID | None = None) -> dict[str, Any]:
        """ThingsBoard's Rpc entity (GET /api/rpc/persistent/{rpcId}), with the cloud's own
        fields (edgeId, requestId, updatedTime, error)."""
        return {
            "id": {"entityType": "RPC", "id": str(self.id)},
            "createdTime": self.created_time,
            "tenantId": ({"entityType": "TENANT", "id": str(tenant_id)} if tenant_id else None),
            "deviceId": {"entityType": "DEVICE", "id": str(self.device_id)},
            "expirationTime": self.expiration_time,
            "request": {
                "id": str(self.id), "deviceId": {"entityType": "DEVICE", "id": str(self.device_id)},
                "oneway": self.oneway, "expirationTime": self.expiration_time,
                "body": {"method": self.method, "params": compact(self.params)},
                "persisted": self.persistent, "retries": self.retries,
                "additionalInfo": self.additional_info,
            },
            "response": self.response_json(),
            "status": str(self.status),
            "additionalInfo": self.additional_info,
            "edgeId": {"entityType": "EDGE", "id": str(self.edge_id)},
            "requestId": self.request_id,
            "updatedTime": self.updated_time,
            "error": self.error,
        }

    def response_json(self) -> Any:
        """The answer as ThingsBoard's Rpc shows it: the device's response (parsed when it is
        JSON), {"error": ...} for a failure, None before any answer."""
        if self.response is not None:
            try:
                return json.loads(self.response)
            except ValueError:
                return self.response
        if self.error is not None:
            return {"error": self.error}
        return None


def compact(value: Any) -> str:
    """JSON text without spaces; ValueError for NaN or Infinity (not JSON)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json_bytes(value: Any, name: str) -> int:
    try:
        return len(compact(value).encode())
    except ValueError as exc:  # NaN or Infinity (Python's JSON parser lets them in)
        raise BadRequest(f"{name}: not valid JSON ({exc})") from exc


def _int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):
        raise BadRequest(f"{name}: expected a whole number, got {value!r}")
    if not is_int64(int(value)):
        raise BadRequest(f"{name}: {value} does not fit in 64 bits")
    return int(value)


def parse_call(body: Any, *, oneway: bool, now_ms: int) -> RpcCall:
    """ThingsBoard's RPC request body, checked: `method` (required text), `params` (any JSON,
    default {}), `timeout` (ms, MIN..MAX_TIMEOUT_MS, default 10000), `expirationTime` (epoch
    ms; overrides timeout as in ThingsBoard), `persistent` (bool), `retries`, `additionalInfo`.
    BadRequest names the problem."""
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object with method and params")
    unknown = set(body) - BODY_FIELDS
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    method = body.get("method")
    if method is None:
        raise BadRequest("method: required")
    if not text_fits(method, MAX_NAME_BYTES):
        raise BadRequest(f"method: expected text of 1 to {MAX_NAME_BYTES} bytes of UTF-8")
    params = body.get("params", {})
    size = _json_bytes(params, "params")
    if size > MAX_PARAMS_BYTES:
        raise BadRequest(f"params: {size} bytes of JSON, at most {MAX_PARAMS_BYTES}")
    persistent = body.get("persistent", False)
    if not isinstance(persistent, bool):
        raise BadRequest(f"persistent: expected true or false, got {persistent!r}")
    timeout = _int(body, "timeout")
    if timeout is None:
        timeout = DEFAULT_TIMEOUT_MS
    elif not MIN_TIMEOUT_MS <= timeout <= MAX_TIMEOUT_MS:
        raise BadRequest(f"timeout: {timeout} ms is out of range {MIN_TIMEOUT_MS}..{MAX_TIMEOUT_MS}")
    expiration = _int(body, "expirationTime")
    if expiration is None:
        expiration = now_ms + timeout
    elif expiration <= 0:
        raise BadRequest(f"expirationTime: {expiration} is not a time (epoch milliseconds)")
    elif not persistent and expiration - now_ms > MAX_TIMEOUT_MS:
        raise BadRequest(f"expirationTime: more than {MAX_TIMEOUT_MS} ms away; a non-persistent "
                         "request waits at most that long (make it persistent)")
    retries = _int(body, "retries")
    if retries is not None and not 0 <= retries <= MAX_REQUEST_ID:
        raise BadRequest(f"retries: {retries} is out of range 0..{MAX_REQUEST_ID}")
    info = body.get("additionalInfo")
    if info is not None and _json_bytes(info, "additionalInfo") > MAX_PARAMS_BYTES:
        raise BadRequest(f"additionalInfo: more than {MAX_PARAMS_BYTES} bytes of JSON")
    return RpcCall(method=method, params=params, oneway=oneway, persistent=persistent,
                   expiration_time=expiration, timeout_ms=timeout, retries=retries,
                   additional_info=info)


def next_request_id(last: int) -> int:
    """The device's next requestId (a positive int32; wraps round)."""
    return last % MAX_REQUEST_ID + 1


# -- transitions -----------------------------------------------------------------------------------


def expired(record: RpcRecord, now_ms: int) -> RpcStatus | None:
    """The status a request takes once its expirationTime has passed without a final status;
    None when it is not due (or nothing changes: a one-way request delivered to the edge)."""
    if record.status.final or now_ms <= record.expiration_time:
        return None
    if record.status is RpcStatus.QUEUED:
        return RpcStatus.EXPIRED  # never sent: it never will be
    if record.oneway:
        return None if record.status is RpcStatus.DELIVERED else RpcStatus.EXPIRED
    # sent and not answered: ThingsBoard's device actor times it out as EXPIRED when persisted,
    # and answers the waiting REST call with RpcError TIMEOUT when not
    return RpcStatus.EXPIRED if record.persistent else RpcStatus.TIMEOUT


def on_sent(record: RpcRecord, now_ms: int) -> RpcRecord | None:
    """The stream sent its downlink: QUEUED -> SENT (None: no change)."""
    return record.with_status(RpcStatus.SENT, now_ms) if record.status is RpcStatus.QUEUED else None


def as_sent(record: RpcRecord) -> RpcRecord:
    """The request as it is while its downlink is in flight (stored QUEUED, shown SENT)."""
    return on_sent(record, record.updated_time) or record


def on_acknowledged(record: RpcRecord, now_ms: int) -> RpcRecord | None:
    """The edge acknowledged its downlink: QUEUED/SENT -> DELIVERED."""
    if record.status in (RpcStatus.QUEUED, RpcStatus.SENT):
        return record.with_status(RpcStatus.DELIVERED, now_ms)
    return None


def on_deleted(record: RpcRecord, now_ms: int) -> RpcRecord | None:
    """The operator deleted it: DELETED unless it is final already (then it stays as it is)."""
    return None if record.status.final else record.with_status(RpcStatus.DELETED, now_ms)


def on_parked(record: RpcRecord, error: str, now_ms: int) -> RpcRecord | None:
    """The edge refused its downlink until it was parked: FAILED with the edge's error."""
    if record.status.final:
        return None
    return record.with_status(RpcStatus.FAILED, now_ms, error=f"refused by the edge: {error}")


class AnswerKind(enum.StrEnum):
    SETTLED = "settled"  # the answer set the request's final status
    LATE = "late"  # after its expirationTime: the request expired instead (or stays as it is)
    ALREADY_FINAL = "already_final"  # a second answer (a resend), or after it was settled
    CONFIRMED = "confirmed"  # the edge reports the expiry the cloud has already recorded
    UNKNOWN = "unknown"  # no such request on this edge and device


@dataclass(frozen=True, slots=True)
class Answer:
    """The responseMsg of an uplink deviceRpcCallMsg that answers a request of the cloud."""

    request_uuid: uuid.UUID
    device_id: uuid.UUID
    response: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class AnswerOutcome:
    kind: AnswerKind
    answer: Answer
    record: RpcRecord | None
    """The request after the answer (None when unknown); changed only when ``changed``."""
    changed: bool = False


def apply_answer(record: RpcRecord | None, answer: Answer, edge_id: uuid.UUID,
                 now_ms: int) -> AnswerOutcome:
    """What an answer from edge ``edge_id`` does to its request. Only a request of the same edge
    and device is answered (another edge's request is unknown to this one)."""
    if record is None or record.edge_id != edge_id or record.device_id != answer.device_id:
        return AnswerOutcome(AnswerKind.UNKNOWN, answer, None)
    if record.status.final:
        expiry_report = (answer.error or "").strip().upper() in ANSWER_ERRORS
        if expiry_report and record.status in (RpcStatus.TIMEOUT, RpcStatus.EXPIRED):
            return AnswerOutcome(AnswerKind.CONFIRMED, answer, record)
        return AnswerOutcome(AnswerKind.ALREADY_FINAL, answer, record)
    if now_ms > record.expiration_time:
        status = expired(as_sent(record), now_ms)  # an answer shows it was sent
        if status is None:
            return AnswerOutcome(AnswerKind.LATE, answer, record)
        error = (answer.error or "").strip().upper()
        # the edge reporting the expiry itself (ThingsBoard Edge answers TIMEOUT at the
        # deadline) settles it; a response after the deadline is late
        kind = AnswerKind.SETTLED if error in ANSWER_ERRORS else AnswerKind.LATE
        return AnswerOutcome(kind, answer, record.with_status(status, now_ms,
                                                              error=answer.error or None), True)
    if answer.error:
        error = answer.error[:MAX_RESPONSE_CHARS]
        status = ANSWER_ERRORS.get(error.strip().upper(), RpcStatus.FAILED)
        return AnswerOutcome(AnswerKind.SETTLED, answer,
                             record.with_status(status, now_ms, error=error), True)
    response = (answer.response or "")[:MAX_RESPONSE_CHARS]
    return AnswerOutcome(AnswerKind.SETTLED, answer,
                         record.with_status(RpcStatus.SUCCESSFUL, now_ms, response=response), True)


# -- the REST answer -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RestAnswer:
    """The answer of POST /api/rpc/{oneway|twoway}: ``body`` None is an empty body (ThingsBoard
    answers 200 and 504 with no body)."""

    status: int
    body: Any = None


def submitted_answer(record: RpcRecord) -> RestAnswer | None:
    """The answer right after the request was stored; None: a two-way request waits for its
    answer (or its expirationTime)."""
    if record.persistent:
        return RestAnswer(200, {"rpcId": str(record.id)})
    if record.status.final:
        return final_answer(record)
    if record.oneway:
        return RestAnswer(200)  # ThingsBoard: 200 once the request is in the edge's queue
    return None


def final_answer(record: RpcRecord) -> RestAnswer:
    """The answer to a non-persistent request once it is settled (or its wait is over), as
    ThingsBoard's AbstractRpcController replies: the device's response (200, its JSON; empty
    when it answered nothing; 406 when it is not JSON), and 504 for an error or no answer."""
    if record.status is RpcStatus.SUCCESSFUL or (record.oneway and not record.status.final):
        text = record.response or ""
        if not text:
            return RestAnswer(200)
        try:
            return RestAnswer(200, json.loads(text))
        except ValueError:
            return RestAnswer(406)
    return RestAnswer(504)
