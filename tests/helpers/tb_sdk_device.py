"""A device on ThingsBoard's own Python SDK (tb-mqtt-client's TBDeviceMqttClient, which always
connects with MQTT 5), run by a Python that has the SDK installed (its paho fork cannot share a
venv with paho-mqtt): ``python tb_sdk_device.py PORT TOKEN``. It prints one JSON line per step:
``connected``, ``telemetry`` (the PUBACK's result code), ``attributes`` (the answer to its
attribute request for the client key ``fw``), ``ready`` (subscribed to RPC requests), then
``rpc`` with the request it answered (its answer: ``{"done": <params>}``). It disconnects and
exits once a line (or end of input) arrives on its stdin: the test sends it after it has seen
the answer reach the edge, so the disconnect cannot overtake the answer. No RPC within 20 s, or
no line within 30 s of it, and it disconnects and exits at once.
"""

import select
import sys
import threading

from tb_device_mqtt import TBDeviceMqttClient  # type: ignore[import-not-found]
from tb_sdk_common import SignalsConnect, say


class Device(SignalsConnect, TBDeviceMqttClient):  # type: ignore[misc]
    """The SDK's device client; ``connected`` is set once it has handled the CONNACK."""


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    client = Device(port, token)
    rpc = threading.Event()

    def on_rpc(request_id: str, body: dict) -> None:
        client.send_rpc_reply(request_id, {"done": body.get("params")})
        say(rpc={"id": request_id, "method": body.get("method")})
        rpc.set()

    client.set_server_side_rpc_request_handler(on_rpc)
    client.connect()
    client.connected.wait(20)
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
    # every wait is bounded: a step that does not come ends the script, so the test's next
    # read meets the end of its output at once instead of waiting for pytest's timeout
    if rpc.wait(20) and select.select([sys.stdin], [], [], 30)[0]:
        sys.stdin.readline()  # the test has seen the RPC answer at the edge
    client.disconnect()


if __name__ == "__main__":
    main()
