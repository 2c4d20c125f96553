"""mqtt/dropped.py: the topics a connection published on that the edge does not serve are
remembered by a bounded key, at most MAX_DROPPED_TOPICS of them, and every drop is counted."""

from __future__ import annotations

from collections import Counter

from edge_sync.mqtt.dropped import MAX_DROPPED_TOPICS, TOPIC_KEY_CHARS, DroppedTopics, Sighting


class Count:
    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


def test_two_thousand_distinct_long_topics_leave_at_most_a_thousand_short_keys() -> None:
    """A client publishing to ever new 60 KB topics once made a connection remember every one
    of them whole (12,000 of them: 64 MB -> 847 MB of RSS) and log each."""
    count = Count()
    dropped = DroppedTopics(count)
    filler = "x" * 60_000
    sightings = Counter(dropped.drop(f"a/{i}/{filler}") for i in range(2_000))
    assert len(dropped) == MAX_DROPPED_TOPICS == 1_000
    assert all(len(key) <= TOPIC_KEY_CHARS for key in dropped._seen)
    assert count.value == 2_000
    assert sightings == {Sighting.NEW: 1_000, Sighting.LIMIT: 1, Sighting.SEEN: 999}


def test_a_topic_is_logged_once_and_told_apart_by_its_first_characters() -> None:
    count = Count()
    dropped = DroppedTopics(count)
    head = "t" * TOPIC_KEY_CHARS
    assert [dropped.drop(t) for t in ("a/b", "a/b", head + "1", head + "2", "a/c")] == [
        Sighting.NEW, Sighting.SEEN, Sighting.NEW, Sighting.SEEN, Sighting.NEW]
    assert (len(dropped), count.value) == (3, 5)
