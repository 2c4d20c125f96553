"""Where edge-sync's time goes per MQTT message: a py-spy profile (``py-spy record --gil
--threads --format raw``: collapsed stacks of the thread holding the GIL, one line per stack
with its sample count) summed into the steps a QoS 1 telemetry PUBLISH takes.

Each sample goes to the first category (in the order of ``CATEGORIES``) whose thread prefix
and stack fragment match, so a step nested in another (the JSON parse inside the handling of a
burst) is named before the step around it. With ``--gil`` only the thread holding the GIL is
sampled: time spent with the GIL released (fsync, socket calls, LMDB's C code that releases
it) is not in these figures, which is why the benchmark also reports the server's whole CPU
per message.

``python -m bench.mqtt_profile FILE [MSGS_PER_S SECONDS RATE_HZ]`` prints the summary of a
recorded profile.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# (category, thread name prefix, stack fragments: all must be in the stack)
CATEGORIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("mqtt: PUBACK frames, in order, one write per batch", "mqtt", ("Acknowledger.send_due",)),
    ("mqtt: commit outcomes settled (loop woken per batch)", "mqtt", ("Acknowledger._settle",)),
    ("mqtt: ack bookkeeping per command (entry, done callback)", "mqtt",
     ("Acknowledger.expect_all",)),
    ("mqtt: JSON parse", "mqtt", ("parse_json",)),
    ("mqtt: body to entries (payloads.py)", "mqtt", ("edge_sync/api/payloads.py",)),
    ("mqtt: actor hop per command (tell: pykka queue put + notify)", "mqtt",
     ("EntityRouter.tell",)),
    ("mqtt: command per burst other (token check, Future)", "mqtt", ("Burst.take",)),
    ("mqtt: amqtt decode (fixed header, PUBLISH variable header)", "mqtt", ("amqtt/",)),
    ("mqtt: frames cut from the buffer (frames.py)", "mqtt", ("edge_sync/mqtt/frames.py",)),
    ("mqtt: per packet: topic, QoS, held for the command", "mqtt",
     ("MqttConnection._packets",)),
    ("mqtt: read loop (socket read into the buffer, drain, keep-alive)", "mqtt",
     ("MqttConnection._serve",)),
    ("mqtt: socket read (recv, StreamReader)", "mqtt", ("_read_ready",)),
    ("mqtt: event loop (select, scheduling)", "mqtt", ()),
    ("entity actor: PostTelemetry to events", "ShardActor", ("EntityActor",)),
    ("entity shards: mailbox (pykka)", "ShardActor", ()),
    ("queue actor: resolve futures, hand outcomes to the MQTT loop", "QueueActor",
     ("QueueActor._resolve",)),
    ("queue actor: latest telemetry read-modify-write", "QueueActor", ("put_latest",)),
    ("queue actor: encode + put events", "QueueActor", ("EventLog.append",)),
    ("queue actor: LMDB transaction other", "QueueActor", ("LmdbStore.write",)),
    ("queue actor: mailbox, other", "QueueActor", ()),
    ("other threads (HTTP loops, tickers, supervisor)", "", ()),
)
"""Steps of the MQTT server as it is since the read burst (one command per device per read,
mqtt/burst.py; packets decoded from a buffer, mqtt/frames.py)."""


def categorise(lines: list[str]) -> tuple[Counter[str], int]:
    """Samples per category, and the total."""
    out: Counter[str] = Counter()
    total = 0
    for line in lines:
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, count = line.rsplit(" ", 1)
        try:
            n = int(count)
        except ValueError:
            continue
        first = stack.split(";", 1)[0]
        thread = first.split(": ", 1)[1] if first.startswith("thread") and ": " in first else first
        total += n
        for name, prefix, fragments in CATEGORIES:
            if thread.startswith(prefix) and all(f in stack for f in fragments):
                out[name] += n
                break
    return out, total


def summarise(path: Path, *, msgs_per_s: float, seconds: float, rate_hz: float) -> dict[str, Any]:
    """The profile's categories as µs of GIL-held time per message and as shares."""
    counts, total = categorise(path.read_text(errors="replace").splitlines())
    messages = msgs_per_s * seconds
    per_msg = {name: (n / rate_hz) / messages * 1e6 if messages else float("nan")
               for name, n in counts.most_common()}
    return {
        "samples": total,
        "gil_held_share": round(total / (rate_hz * seconds), 3) if seconds else None,
        "msgs_per_s": round(msgs_per_s),
        "gil_us_per_msg": round(sum(per_msg.values()), 1),
        "us_per_msg": {k: round(v, 1) for k, v in per_msg.items()},
        "share_pct": {name: round(n * 100 / total, 1) for name, n in counts.most_common()} if total else {},
    }


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__ or "")
        return 2
    msgs, seconds, rate = (float(x) for x in (argv[1:4] if len(argv) >= 4 else (1, 1, 100)))
    print(json.dumps(summarise(Path(argv[0]), msgs_per_s=msgs, seconds=seconds, rate_hz=rate), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
