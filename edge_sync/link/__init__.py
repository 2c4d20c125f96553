"""The cloud link: the protobuf boundary (wire.py), pure link logic (backoff, circuit breaker,
uplink packing) and the edge's ConnectionActor and DownlinkActor."""
