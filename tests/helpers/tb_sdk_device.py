"""A device on ThingsBoard's own Python SDK (tb-mqtt-client's TBDeviceMqttClient, which always
connects with MQTT 5), run by a Python that has the SDK installed (its paho fork cannot share a
venv with paho-mqtt): ``python tb_sdk_device.py PORT TOKEN``. It prints one JSON line per step:
``connected``, ``telemetry`` (the PUBACK's result code), ``attributes`` (the answer to its
attribute request for the client key ``fw``), ``ready`` (subscribed to RPC requests), then
``rpc`` with the request it answered (its answer: ``{"done": <params>}``), and exits.
"""

import json
import sys
import threading
import time

from tb_device_mqtt import TBDeviceMqttClient  # type: ignore[import-not-found]


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    client = TBDeviceMqttClient("127.0.0.1", port=port, username=token)
    rpc = threading.Event()

    def on_rpc(request_id: str, body: dict) -> None:
        client.send_rpc_reply(request_id, {"done": body.get("params")})
        say(rpc={"id": request_id, "method": body.get("method")})
        rpc.set()

    client.set_server_side_rpc_request_handler(on_rpc)
    client.connect()
    deadline = time.monotonic() + 20
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    say(connected=client.is_connected())
    say(telemetry=client.send_telemetry({"sdk": 1}).get())
    answered = threading.Event()
    answer: dict = {}

    def on_attributes(result: dict, _error: object) -> None:
        answer.update(result)
        answered.set()

    client.request_attributes(client_keys=["fw"], callback=on_attributes)
    answered.wait(20)
    say(attributes=answer)
    say(ready=True)
    rpc.wait(20)
    time.sleep(0.5)  # the answer's PUBACK
    client.disconnect()


if __name__ == "__main__":
    main()
