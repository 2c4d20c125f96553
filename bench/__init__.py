"""Benchmarks of the edge agent, run with ``scripts/bench <name>`` (``python -m bench``).

Each benchmark prints progress on stderr and exactly one JSON object as the last line of
stdout. ``ingest`` measures how fast events are made durable: in process, against a raw LMDB
ceiling, and through the device HTTP API of a real ``edge-sync run`` subprocess.
"""

from __future__ import annotations

__all__: list[str] = []
