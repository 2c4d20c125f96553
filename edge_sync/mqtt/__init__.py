"""The device MQTT API (ThingsBoard's topics) on the agent's own asyncio loop: the packet codec
is amqtt's, the connection handling and the delivery contract (PUBACK after commit) are ours."""
