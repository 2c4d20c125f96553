"""The device MQTT API (ThingsBoard's topics) on the agent's own asyncio loop: the packet codec
is amqtt's for MQTT 3.1 and 3.1.1 and the ``mqtt5`` package's for MQTT 5; the connection
handling and the delivery contract (PUBACK after commit) are ours."""
