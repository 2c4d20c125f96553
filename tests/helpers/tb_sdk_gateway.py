"""A gateway on ThingsBoard's own Python SDK (tb-mqtt-client's TBGatewayMqttClient, MQTT 5
always), run by a Python that has the SDK installed: ``python tb_sdk_gateway.py PORT TOKEN``.
It connects, connects the device ``SDK Sensor`` of type ``thermo``, sends its telemetry
(``{"t": 21.5}``) and client attributes (``{"fw": "v2.0"}``) at QoS 1, and prints one JSON line
per step: ``connected``, ``device`` (the PUBACK's result code of the connect), ``telemetry``
and ``attributes`` (their PUBACKs' result codes); then it disconnects.
"""

import json
import sys
import threading

from tb_gateway_mqtt import TBGatewayMqttClient  # type: ignore[import-not-found]


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


class Gateway(TBGatewayMqttClient):  # type: ignore[misc]
    """Sets ``connected`` once the SDK has handled the CONNACK, hooked where the SDK hooks it
    (TBGatewayMqttClient._on_connect): the callback given to ``connect()`` is stored only after
    the network loop has started, so the CONNACK could be handled before it is there."""

    def __init__(self, port: int, token: str) -> None:
        self.connected = threading.Event()
        super().__init__("127.0.0.1", port=port, username=token)

    def _on_connect(self, *args: object) -> None:
        super()._on_connect(*args)
        self.connected.set()


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    gateway = Gateway(port, token)
    gateway.connect()
    gateway.connected.wait(20)
    say(connected=gateway.is_connected())
    say(device=gateway.gw_connect_device("SDK Sensor", "thermo").get())
    say(telemetry=gateway.gw_send_telemetry("SDK Sensor", {"t": 21.5}).get())
    say(attributes=gateway.gw_send_attributes("SDK Sensor", {"fw": "v2.0"}).get())
    gateway.disconnect()


if __name__ == "__main__":
    main()
