"""Log set-up for the process entry points, and the `redact` helper for everyone.

This module owns loguru's sinks. `configure_logging` is called once, by an entry point
(``edge-sync run``, ``edge-cloud serve``, the CLI); library modules never add or remove sinks,
they only ``logger.bind(key=value, ...)`` and log, and the sinks here render the bound fields:

- text: ``2024-05-01T12:00:00.123Z | INFO     | edge | message | key=value key2="a b"``,
  followed by the traceback when there is one;
- json: one compact object per line, ``{"ts": ..., "level": ..., "component": ...,
  "message": ..., <every bound field>, "exception": "<traceback>"}`` (``exception`` only when
  the record has one). ``ts`` is ISO-8601 UTC with milliseconds.

``component`` is the process's name given to `configure_logging`; a record bound with its own
``component`` shows that instead. Standard-library ``logging`` records (grpc, aiohttp) at
WARNING and above are forwarded to the same sinks, with the stdlib logger's name as ``logger``.
Variable values are never printed in tracebacks (``diagnose=False``): they may hold secrets.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from edge_sync.config import LogConfig, LogFormat
from edge_sync.errors import ConfigError

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["configure_logging", "forward_stdlib_logging", "mark_told", "redact"]

_PRIVATE = "_edge_sync_rendered"
"""The extra key a formatter stores its rendered line under (loguru's documented recipe for
custom formats); it is never rendered itself."""

_CORE_KEYS = ("ts", "level", "component", "message", "exception")

_TOLD = "_edge_sync_told"
"""The attribute `mark_told` sets on an exception."""


def mark_told(exc: BaseException) -> BaseException:
    """``exc`` is counted and logged by its raiser already (the link's undecodable cloud
    messages): the record a library logs for it (grpc's "Exception deserializing message!")
    is not forwarded. ``exc`` itself, for ``raise mark_told(...)``."""
    setattr(exc, _TOLD, True)
    return exc


def redact(value: str) -> str:
    """Mask a secret for logging: its first 2 characters, then ``****``.

    Values shorter than 8 characters are masked entirely (2 characters would give too much of
    them away); an empty value stays empty, so "not set" remains visible.
    """
    if not value:
        return ""
    if len(value) < 8:
        return "****"
    return value[:2] + "****"


def configure_logging(log: LogConfig, *, component: str, stream: TextIO | None = None) -> None:
    """Replace every loguru sink with this process's: ``stream`` (default stderr) and the file.

    The file sink (when ``log.file`` is set) rotates and prunes per ``log.rotation`` /
    ``log.retention`` and writes from a background thread (``enqueue=True``). Raises
    `ConfigError` when the file cannot be opened or rotation/retention cannot be parsed.
    """
    render = _render_json if log.format is LogFormat.JSON else _render_text
    template = "{extra[" + _PRIVATE + "]}\n" + ("{exception}" if render is _render_text else "")

    def formatter(record: Record) -> str:
        record["extra"][_PRIVATE] = render(record, component)
        return template

    common: dict[str, Any] = {
        "level": log.level.value,
        "format": formatter,
        "colorize": False,
        "backtrace": False,
        "diagnose": False,
    }
    logger.remove()
    logger.add(stream if stream is not None else sys.stderr, **common)
    if log.file is not None:
        _add_file_sink(log, common)
    forward_stdlib_logging()


def _add_file_sink(log: LogConfig, common: dict[str, Any]) -> None:
    assert log.file is not None
    retention: int | str = int(log.retention) if log.retention.isdigit() else log.retention
    try:
        log.file.parent.mkdir(parents=True, exist_ok=True)
        logger.add(
            str(log.file),
            rotation=log.rotation,
            retention=retention,
            enqueue=True,
            encoding="utf-8",
            **common,
        )
    except OSError as e:
        raise ConfigError(f"log.file: {str(log.file)!r} is not valid: expected a writable file ({e})") from e
    except (ValueError, TypeError) as e:
        if "retention" in str(e).lower():
            key, value, expected = "log.retention", log.retention, "a count or a duration"
        else:
            key, value, expected = "log.rotation", log.rotation, "a size, an interval or a time"
        raise ConfigError(f"{key}: {value!r} is not valid: expected {expected} ({e})") from e


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _timestamp(record: Record) -> str:
    ts: datetime = record["time"].astimezone(UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _extras(record: Record) -> dict[str, Any]:
    return {k: v for k, v in record["extra"].items() if k not in ("component", _PRIVATE)}


def _component(record: Record, component: str) -> str:
    return str(record["extra"].get("component", component))


def _render_text(record: Record, component: str) -> str:
    line = (
        f"{_timestamp(record)} | {record['level'].name:<8} | {_component(record, component)}"
        f" | {record['message']}"
    )
    extras = _extras(record)
    if extras:
        line += " | " + " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
    return line


def _text_value(value: object) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, default=str, separators=(",", ":"))
    else:
        text = str(value)
    if not text or any(c.isspace() or c in '"=|' for c in text):
        return json.dumps(text)
    return text


def _render_json(record: Record, component: str) -> str:
    obj: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record["level"].name,
        "component": _component(record, component),
        "message": record["message"],
    }
    for key, value in _extras(record).items():
        obj[f"extra_{key}" if key in _CORE_KEYS else key] = value
    exc = record["exception"]
    if exc is not None:
        obj["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback)).rstrip()
    return json.dumps(obj, default=str, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Standard-library logging
# --------------------------------------------------------------------------------------------


class _ToLoguru(logging.Handler):
    """Forwards stdlib ``logging`` records (grpc, aiohttp, ...) to loguru's sinks."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("aiohttp.server") and _refused_by_parser(exc):
            # aiohttp refusing a malformed request (too long a line, an unknown Content-Encoding)
            # before any handler runs: the client's error, one WARNING line, not a traceback
            # anyone could use to fill the log. A handler's own failure (any other exception)
            # is forwarded below as it is: ERROR, with its traceback.
            logger.bind(logger=record.name).warning(
                "HTTP request refused by the parser: {}: {}", type(exc).__name__, str(exc)[:200])
            return
        if record.name == "grpc._common" and getattr(exc, _TOLD, False):
            return  # its raiser counted it and logged it, at most once a minute
        if record.name == "grpc._common" and _undecodable(exc):
            # grpc could not parse a message the peer sent (garbage on the stream): the peer's
            # error, which grpc answers by ending the call (INTERNAL, "Exception deserializing
            # request!"); one WARNING line, not a traceback a hostile peer could fill the log
            # with. A deserializer failing otherwise is ours: ERROR with its traceback, below.
            logger.bind(logger=record.name).warning(
                "gRPC message refused: not a valid protobuf message: {}: {}",
                type(exc).__name__, str(exc)[:200])
            return
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info or None).bind(logger=record.name).log(level, record.getMessage())


def _refused_by_parser(exc: BaseException | None) -> bool:
    """Whether aiohttp's server logged ``exc`` for a request its HTTP parser refused (aiohttp's
    HttpProcessingError family, or its RequestPayloadError caused by one: a body it could not
    decode, met when it drains the body after the handler answered), not for a failure of the
    application's handler."""
    from aiohttp.http_exceptions import HttpProcessingError  # loaded already when it logs
    from aiohttp.web_protocol import RequestPayloadError

    seen = 0
    while exc is not None and seen < 8:  # the cause chain, bounded
        if isinstance(exc, HttpProcessingError):
            return True
        if not isinstance(exc, RequestPayloadError):
            return False
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _undecodable(exc: BaseException | None) -> bool:
    """Whether grpc logged ``exc`` for bytes that are not the protobuf message expected."""
    from google.protobuf.message import DecodeError  # loaded already when grpc logs

    return isinstance(exc, DecodeError)


def forward_stdlib_logging() -> None:
    """Standard-library ``logging`` records at WARNING and above go to loguru's sinks (called
    by ``configure_logging``; idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, _ToLoguru) for h in root.handlers):
        root.addHandler(_ToLoguru())
    # pykka logs every actor failure itself; the supervisor already logs each one once, with
    # the actor and the exception, so pykka's own copy would double every failure line.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
