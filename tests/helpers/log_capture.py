"""Capturing what loguru logs in this process while a block runs (in-process tests: an EdgeApp,
an HTTP host), as loguru's record dicts: ``level.name``, ``message``, ``extra`` (the bound
fields), ``exception``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from loguru import logger


@contextlib.contextmanager
def log_records() -> Iterator[list[Any]]:
    """The records logged while the block runs, from any thread, in order."""
    records: list[Any] = []
    sink = logger.add(lambda message: records.append(message.record), level="DEBUG")
    try:
        yield records
    finally:
        logger.remove(sink)
