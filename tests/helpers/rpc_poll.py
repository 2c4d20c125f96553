"""A stand-in for a device's long poll in entity and shard tests: a one-shot RPC subscriber
that records what it was given (a request's device JSON, or the error that ended it)."""

from __future__ import annotations

from typing import Any


class RecordingPoll:
    """Waiting until claimed (``gone``: its client went away before it was told anything);
    ``got`` holds what it was resolved or failed with."""

    def __init__(self, *, gone: bool = False) -> None:
        self.state = "gone" if gone else "waiting"
        self.got: list[Any] = []

    @property
    def live(self) -> bool:
        return self.state == "waiting"

    def claim(self) -> bool:
        if self.state != "waiting":
            return False
        self.state = "claimed"
        return True

    def resolve(self, value: Any) -> None:
        self.state = "done"
        self.got.append(value)

    def fail(self, exc: BaseException) -> None:
        self.state = "done"
        self.got.append(exc)

    def release(self) -> None:
        if self.state == "claimed":
            self.state = "waiting"
