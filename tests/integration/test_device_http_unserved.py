"""What ThingsBoard's device HTTP API serves and the edge does not, answered plainly, in one
process: a whole EdgeApp (real LMDB, the real aiohttp device API on loopback) and real HTTP
requests.

- ``POST /api/v1/{token}/rpc`` (a device's own RPC request: DeviceApiController.postRpcRequest)
  was 405: 200 with ``{"error": ...}`` at once, ThingsBoard's shape of a failed answer;
- ``POST /api/v1/provision`` (DeviceApiController.provisionDevice) was 404: 200 with
  ThingsBoard's answer for a provision key it does not know (NOT_FOUND);
- ``POST /api/v1/{token}/claim`` (DeviceApiController.saveClaimingInfo) was 404: 501.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.app import EdgeApp
from tests.helpers.log_capture import log_records
from tests.helpers.metric_values import metric_total
from tests.helpers.mqtt_app import AppFactory
from tests.integration.test_device_sessions import event_count, http

DEADLINE_S = 10.0
TOKEN = "unserved-token"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    with AppFactory(tmp_path) as apps:
        edge = apps(EDGE_HTTP_MAX_BODY_BYTES="1024")
        _, created = edge.service.create_device("unserved", token=TOKEN)
        created.result(DEADLINE_S)
        yield edge


def answers(app: EdgeApp, code: int) -> float:
    return metric_total(app.metrics.snapshot(), "edge_sync_device_requests_total",
                        protocol="http", code=str(code))


def test_a_client_side_rpc_request_is_answered_with_an_error_at_once(app: EdgeApp) -> None:
    before = event_count(app)
    with log_records() as records:
        status, headers, body = http(app, "POST", f"/api/v1/{TOKEN}/rpc",
                                     {"method": "getCurrentTime", "params": {}})
    assert (status, headers["Content-Type"], json.loads(body)) == (
        200, "application/json; charset=utf-8",
        {"error": "client-side RPC is not served by the edge"})
    assert [(r["level"].name, r["message"]) for r in records
            if r["message"].startswith("client-side RPC")] == [
        ("INFO", "client-side RPC 'getCurrentTime' of device unserved answered with an error: "
         "client-side RPC is not served by the edge")]
    # the limits MQTT answers itself are not answered over HTTP (nor by ThingsBoard's HTTP
    # transport): the same error
    assert json.loads(http(app, "POST", f"/api/v1/{TOKEN}/rpc",
                           {"method": "getSessionLimits"})[2]) == {
        "error": "client-side RPC is not served by the edge"}
    assert http(app, "POST", "/api/v1/no-such-token/rpc", {"method": "x"})[0] == 401
    for raw in (b"{not json", b'{"params": {}}', b'["getTime"]', b""):
        assert http(app, "POST", f"/api/v1/{TOKEN}/rpc", raw=raw)[0] == 400, raw
    assert http(app, "POST", f"/api/v1/{TOKEN}/rpc", raw=b'{"method": "' + b"x" * 2000
                + b'"}')[0] == 413
    assert event_count(app) == before
    assert answers(app, 200) == 2


@pytest.mark.parametrize("raw", [
    json.dumps({"deviceName": "new-device", "provisionDeviceKey": "key",
                "provisionDeviceSecret": "secret"}).encode(),
    b"", b"{not json"])
def test_a_provisioning_request_is_answered_not_found(app: EdgeApp, raw: bytes) -> None:
    before = event_count(app)
    status, _, body = http(app, "POST", "/api/v1/provision", raw=raw)
    assert (status, json.loads(body)) == (
        200, {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"})
    assert event_count(app) == before  # nothing provisioned
    assert answers(app, 200) == 1


def test_a_claim_is_refused_with_501(app: EdgeApp) -> None:
    before = event_count(app)
    status, _, body = http(app, "POST", f"/api/v1/{TOKEN}/claim",
                           {"secretKey": "s", "durationMs": 60000})
    assert (status, json.loads(body)) == (501, {
        "status": 501, "error": "not implemented",
        "message": "device claiming is not served by the edge: claim the device through "
                   "ThingsBoard"})
    assert http(app, "POST", f"/api/v1/{TOKEN}/claim", raw=b"")[0] == 501  # body optional
    assert http(app, "POST", "/api/v1/no-such-token/claim", {"secretKey": "s"})[0] == 401
    assert event_count(app) == before
    assert answers(app, 501) == 2
