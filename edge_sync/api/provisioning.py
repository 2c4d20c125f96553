"""ThingsBoard's device provisioning, answered as the edge does not provision devices.

A device that provisions itself sends ThingsBoard a request naming a device profile's
provision key and secret (over MQTT in a provision-only session: mqtt/provision.py; over HTTP
to ``POST /api/v1/provision``: DeviceApiController.provisionDevice) and gets its new
credentials back. The edge keeps no device profiles with provisioning keys, so every request
gets ThingsBoard's answer for a key it does not know (DeviceProvisionServiceImpl
.provisionDevice: NOT_FOUND), as JsonConverter.toJson(ProvisionDeviceResponseMsg) writes it:
the device stops asking and its operator sees why. Create the device in the cloud or on the
edge (``edge-sync device create``) and give it its access token.
"""

from __future__ import annotations

__all__ = ["NOT_FOUND", "PROVISION"]

PROVISION = "provision"
"""The username or client id of a provision-only MQTT session (ThingsBoard's
DataConstants.PROVISION)."""
NOT_FOUND = {"errorMsg": "Provision data was not found!", "status": "NOT_FOUND"}
"""ThingsBoard's answer to a request whose provision key it does not know."""
