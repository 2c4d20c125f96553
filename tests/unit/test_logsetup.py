"""edge_sync.logsetup: text and JSON sinks, bound fields, the rotating file, redact()."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from loguru import logger

from edge_sync.config import LogConfig, LogFormat, LogLevel
from edge_sync.errors import ConfigError
from edge_sync.logsetup import configure_logging, mark_told, redact

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(autouse=True)
def _restore_loguru() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h).__module__ == "edge_sync.logsetup"]:
        root.removeHandler(handler)


def json_lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def configure(fmt: LogFormat, level: LogLevel = LogLevel.INFO) -> io.StringIO:
    buf = io.StringIO()
    configure_logging(LogConfig(level=level, format=fmt), component="edge", stream=buf)
    return buf


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def test_json_line_has_exactly_the_core_keys_and_the_bound_fields() -> None:
    buf = configure(LogFormat.JSON)
    before = datetime.now(UTC)
    logger.bind(entity_id="e-1", seq=42).info("event appended")
    (line,) = json_lines(buf)
    assert list(line) == ["ts", "level", "component", "message", "entity_id", "seq"]
    assert line["level"] == "INFO"
    assert line["component"] == "edge"
    assert line["message"] == "event appended"
    assert (line["entity_id"], line["seq"]) == ("e-1", 42)
    assert isinstance(line["ts"], str) and TS.fullmatch(line["ts"])
    ts = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert abs(ts - before) < timedelta(seconds=5)


def test_json_is_one_compact_line_per_record() -> None:
    buf = configure(LogFormat.JSON)
    logger.info("multi\nline {braces} <tags>")
    logger.warning("second")
    raw = buf.getvalue().splitlines()
    assert len(raw) == 2
    assert ": " not in raw[1] and ", " not in raw[1]
    assert json.loads(raw[0])["message"] == "multi\nline {braces} <tags>"


def test_json_without_extras_has_only_core_keys() -> None:
    buf = configure(LogFormat.JSON)
    logger.info("plain")
    assert set(json_lines(buf)[0]) == {"ts", "level", "component", "message"}


def test_json_exception_is_a_string_field() -> None:
    buf = configure(LogFormat.JSON)
    try:
        raise ValueError("broken thing")
    except ValueError:
        logger.bind(actor="queue").exception("append failed")
    (line,) = json_lines(buf)
    assert list(line) == ["ts", "level", "component", "message", "actor", "exception"]
    assert line["level"] == "ERROR"
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: broken thing")


def test_json_non_serialisable_extra_and_colliding_names() -> None:
    buf = configure(LogFormat.JSON)
    logger.bind(path=Path("/x"), level="custom", ts=1).info("odd extras")
    (line,) = json_lines(buf)
    assert line["path"] == "/x"
    assert line["level"] == "INFO"
    assert (line["extra_level"], line["extra_ts"]) == ("custom", 1)


def test_bound_component_overrides_the_process_component() -> None:
    buf = configure(LogFormat.JSON)
    logger.bind(component="connection").info("connected")
    (line,) = json_lines(buf)
    assert line["component"] == "connection"
    assert "extra_component" not in line


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def test_text_line_layout_with_bound_fields() -> None:
    buf = configure(LogFormat.TEXT)
    logger.bind(entity_id="e-1", seq=7, note="two words").info("event appended")
    line = buf.getvalue()
    assert line.endswith("\n")
    ts, level, component, message, fields = line.rstrip("\n").split(" | ")
    assert TS.fullmatch(ts)
    assert level.strip() == "INFO"
    assert component == "edge"
    assert message == "event appended"
    assert fields == 'entity_id=e-1 seq=7 note="two words"'


def test_text_line_without_extras_and_with_markup_characters() -> None:
    buf = configure(LogFormat.TEXT)
    logger.warning("value {x} <red>not a tag</red>")
    line = buf.getvalue().rstrip("\n")
    assert line.endswith(" | WARNING  | edge | value {x} <red>not a tag</red>")


def test_text_exception_follows_the_line() -> None:
    buf = configure(LogFormat.TEXT)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("| ERROR    | edge | failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: boom"


# --------------------------------------------------------------------------------------------
# Sinks and levels
# --------------------------------------------------------------------------------------------


def test_level_filters_records() -> None:
    buf = configure(LogFormat.JSON, LogLevel.WARNING)
    logger.info("hidden")
    logger.warning("shown")
    assert [line["message"] for line in json_lines(buf)] == ["shown"]
    buf = configure(LogFormat.JSON, LogLevel.TRACE)
    logger.trace("fine detail")
    assert json_lines(buf)[0]["level"] == "TRACE"


def test_configure_replaces_previous_sinks() -> None:
    first = configure(LogFormat.TEXT)
    second = configure(LogFormat.JSON)
    logger.info("only once")
    assert first.getvalue() == ""
    assert json_lines(second)[0]["message"] == "only once"


def test_default_sink_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogConfig(format=LogFormat.JSON), component="edge-cloud")
    logger.bind(edge="rk").info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    line = json.loads(captured.err)
    assert (line["component"], line["edge"]) == ("edge-cloud", "rk")


def test_file_sink_gets_the_same_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "edge.log"
    buf = io.StringIO()
    log = LogConfig(format=LogFormat.JSON, file=path, rotation="1 MB", retention="3")
    configure_logging(log, component="edge", stream=buf)
    logger.bind(device="d1").info("to both")
    logger.complete()
    logger.remove()  # stops the enqueue thread and closes the file
    from_file = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert from_file == json_lines(buf)
    assert from_file[0]["device"] == "d1"


def test_bad_rotation_is_a_config_error(tmp_path: Path) -> None:
    log = LogConfig(file=tmp_path / "edge.log", rotation="every blue moon")
    with pytest.raises(ConfigError, match=r"^log\.rotation: 'every blue moon' is not valid"):
        configure_logging(log, component="edge", stream=io.StringIO())


def test_bad_retention_is_a_config_error(tmp_path: Path) -> None:
    log = LogConfig(file=tmp_path / "edge.log", retention="forever-ish")
    with pytest.raises(ConfigError, match=r"^log\.retention: 'forever-ish' is not valid"):
        configure_logging(log, component="edge", stream=io.StringIO())


def test_unwritable_log_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = LogConfig(file=blocker / "edge.log")
    with pytest.raises(ConfigError, match=r"^log\.file: .*not-a-dir/edge\.log"):
        configure_logging(log, component="edge", stream=io.StringIO())


def test_stdlib_logging_is_forwarded() -> None:
    buf = configure(LogFormat.JSON)
    logging.getLogger("grpc._channel").warning("channel %s closed", "c1")
    logging.getLogger("grpc._channel").info("below the stdlib root level")
    (line,) = json_lines(buf)
    assert (line["level"], line["message"], line["logger"]) == (
        "WARNING",
        "channel c1 closed",
        "grpc._channel",
    )
    configure(LogFormat.JSON)  # a second call does not add a second forwarder
    forwarders = [h for h in logging.getLogger().handlers if type(h).__name__ == "_ToLoguru"]
    assert len(forwarders) == 1


def test_aiohttp_parser_refusal_is_a_warning_a_handler_failure_an_error() -> None:
    """aiohttp's server logs both alike ("Error handling request from ..."): a request its
    parser refused (an HttpProcessingError) is the client's error, one WARNING line without a
    traceback; anything else failed inside the application, ERROR with its traceback."""
    from aiohttp.http_exceptions import LineTooLong

    buf = configure(LogFormat.JSON)
    server = logging.getLogger("aiohttp.server")
    for exc in (LineTooLong("Status line is too long", "8190", 9000),
                OverflowError("int too large to convert")):
        try:
            raise exc
        except Exception:
            server.exception("Error handling request from %s", "127.0.0.1")
    refused, failed = json_lines(buf)
    assert (refused["level"], refused["message"], refused["logger"]) == (
        "WARNING", "HTTP request refused by the parser: LineTooLong: 400, message:\n  Got more "
        "than 8190 bytes when reading: 'Status line is too long'.", "aiohttp.server")
    assert "exception" not in refused
    assert (failed["level"], failed["message"], failed["logger"]) == (
        "ERROR", "Error handling request from 127.0.0.1", "aiohttp.server")
    assert str(failed["exception"]).endswith("OverflowError: int too large to convert")


def test_a_peer_message_grpc_cannot_parse_is_a_warning_a_deserializer_bug_an_error() -> None:
    """grpc logs "Exception deserializing message!" with its traceback for any deserializer
    failure (grpc/_common.py ``_transform``). Bytes that are not the protobuf message expected
    are the peer's error: one WARNING line without a traceback. Anything else is ours: ERROR."""
    from edge_sync.proto import edge_pb2

    buf = configure(LogFormat.JSON)
    common = logging.getLogger("grpc._common")
    for deserialize in (edge_pb2.RequestMsg.FromString, lambda b: b.decode("ascii").upper(1)):
        try:
            deserialize(b"\x00")
        except Exception:
            common.exception("Exception deserializing message!")
    refused, failed = json_lines(buf)
    assert (refused["level"], refused["logger"]) == ("WARNING", "grpc._common")
    assert refused["message"].startswith(
        "gRPC message refused: not a valid protobuf message: DecodeError: Error parsing message")
    assert "exception" not in refused
    assert (failed["level"], failed["message"], failed["logger"]) == (
        "ERROR", "Exception deserializing message!", "grpc._common")
    assert "TypeError" in str(failed["exception"])


def test_grpc_record_of_an_exception_its_raiser_told_is_not_forwarded() -> None:
    """The link counts and logs an undecodable message from the cloud itself (at most one line
    a minute) and marks the DecodeError (``mark_told``): grpc's record of it is not forwarded.
    The same exception unmarked still is, as a WARNING."""
    from edge_sync.proto import edge_pb2

    buf = configure(LogFormat.JSON)
    common = logging.getLogger("grpc._common")
    for told in (True, False):
        try:
            try:
                edge_pb2.ResponseMsg.FromString(b"\xff")
            except Exception as exc:
                if told:
                    mark_told(exc)
                raise
        except Exception:
            common.exception("Exception deserializing message!")
    (line,) = json_lines(buf)
    assert (line["level"], line["logger"]) == ("WARNING", "grpc._common")
    assert str(line["message"]).startswith("gRPC message refused: not a valid protobuf message")


def test_a_body_aiohttp_cannot_decode_is_a_refusal_even_met_after_the_handler() -> None:
    """A gzip body that is not gzip: the handler answered 400, then aiohttp drains the rest of
    the body and logs "Unhandled exception" with a RequestPayloadError caused by the parser's
    ContentEncodingError. That is still the client's error: one WARNING line. A
    RequestPayloadError with no parser error behind it is not."""
    from aiohttp.http_exceptions import ContentEncodingError
    from aiohttp.web_protocol import RequestPayloadError

    buf = configure(LogFormat.JSON)
    server = logging.getLogger("aiohttp.server")
    try:
        try:
            raise ContentEncodingError("Can not decode content-encoding: gzip")
        except ContentEncodingError as cause:
            raise RequestPayloadError("Can not decode content-encoding: gzip") from cause
    except Exception:
        server.exception("Unhandled exception")
    try:
        raise RequestPayloadError("something else")
    except Exception:
        server.exception("Unhandled exception")
    refused, failed = json_lines(buf)
    assert (refused["level"], refused["message"]) == (
        "WARNING", "HTTP request refused by the parser: RequestPayloadError: Can not decode "
        "content-encoding: gzip")
    assert "exception" not in refused
    assert (failed["level"], failed["message"]) == ("ERROR", "Unhandled exception")


# --------------------------------------------------------------------------------------------
# redact
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s3cr3t-routing-secret", "s3****"),
        ("abcdefgh", "ab****"),
        ("short", "****"),
        ("a", "****"),
        ("", ""),
    ],
)
def test_redact(value: str, expected: str) -> None:
    assert redact(value) == expected
