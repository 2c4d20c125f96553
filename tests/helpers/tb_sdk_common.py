"""What the scripts run on ThingsBoard's own Python SDK (``tb_sdk_device.py``,
``tb_sdk_gateway.py``) share: their one-JSON-line-per-step report and the hook that tells them
the SDK has handled the CONNACK. Imported from the scripts' own folder, by the SDK's Python."""

import json
import threading
from typing import Any


def say(**what: object) -> None:
    print(json.dumps(what), flush=True)


class SignalsConnect:
    """Mixed in before an SDK client class: ``connected`` is set once the SDK has handled the
    CONNACK, hooked where the SDK's own gateway client hooks it
    (tb_gateway_mqtt.TBGatewayMqttClient._on_connect). The callback given to ``connect()`` is
    stored only after the network loop has started, so the CONNACK could be handled before it
    is there."""

    def __init__(self, port: int, token: str) -> None:
        self.connected = threading.Event()
        super().__init__("127.0.0.1", port=port, username=token)  # type: ignore[call-arg]

    def _on_connect(self, *args: Any) -> None:
        super()._on_connect(*args)  # type: ignore[misc]
        self.connected.set()
