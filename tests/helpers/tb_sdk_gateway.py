"""A gateway on ThingsBoard's own Python SDK (tb-mqtt-client's TBGatewayMqttClient, MQTT 5
always), run by a Python that has the SDK installed: ``python tb_sdk_gateway.py PORT TOKEN``.
It connects, connects the device ``SDK Sensor`` of type ``thermo``, sends its telemetry
(``{"t": 21.5}``) and client attributes (``{"fw": "v2.0"}``) at QoS 1, and prints one JSON line
per step: ``connected``, ``device`` (the PUBACK's result code of the connect), ``telemetry``
and ``attributes`` (their PUBACKs' result codes); then it disconnects.
"""

import json
import sys
import time

from tb_gateway_mqtt import TBGatewayMqttClient  # type: ignore[import-not-found]


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


def main() -> None:
    port, token = int(sys.argv[1]), sys.argv[2]
    gateway = TBGatewayMqttClient("127.0.0.1", port=port, username=token)
    gateway.connect()
    deadline = time.monotonic() + 20
    while not gateway.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    say(connected=gateway.is_connected())
    say(device=gateway.gw_connect_device("SDK Sensor", "thermo").get())
    say(telemetry=gateway.gw_send_telemetry("SDK Sensor", {"t": 21.5}).get())
    say(attributes=gateway.gw_send_attributes("SDK Sensor", {"fw": "v2.0"}).get())
    gateway.disconnect()


if __name__ == "__main__":
    main()
