"""What the edge and the reference cloud share: the protobuf boundary (``wire``), the protocol's
limits (``limits``), the aiohttp host that runs an HTTP API on its own thread (``http_host``),
HTTP error mapping, JSON bodies, and the admin APIs' request guard and health probes. Nothing
here imports the edge's actors, api or link packages, nor the cloud."""
