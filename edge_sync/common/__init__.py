"""What the edge and the reference cloud share: the protobuf boundary (``wire``), the aiohttp
host that runs an HTTP API on its own thread, HTTP error mapping, JSON bodies and the admin APIs'
request guard. Nothing here imports the edge's actors, api or link packages, nor the cloud."""
