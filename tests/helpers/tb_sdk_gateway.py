"""A gateway on ThingsBoard's own Python SDK (tb-mqtt-client's TBGatewayMqttClient, MQTT 5
always), run by a Python that has the SDK installed: ``python tb_sdk_gateway.py PORT TOKEN``.
It connects, connects the device ``SDK Sensor`` of type ``thermo``, sends its telemetry
(``{"t": 21.5}``) and client attributes (``{"fw": "v2.0"}``) at QoS 1, and prints one JSON line
per step: ``connected``, ``device`` (the PUBACK's result code of the connect), ``telemetry``
and ``attributes`` (their PUBACKs' result codes); then it disconnects.
"""

import sys

from tb_gateway_mqtt import TBGatewayMqttClient  # type: ignore[import-not-found]
from tb_sdk_common import SignalsConnect, say


class Gateway(SignalsConnect, TBGatewayMqttClient):  # type: ignore[misc]
    """The SDK's gateway client; ``connected`` is set once it has handled the CONNACK."""


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
