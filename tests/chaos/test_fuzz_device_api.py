"""Scenario 9, device side: the device HTTP API of a real `edge-sync run` process fuzzed with
hypothesis over real HTTP.

Bodies: arbitrary bytes, truncated and bit-flipped valid bodies, random JSON text (NaN and
infinities as raw literals, huge integers, lone surrogate escapes, deep nesting up to thousands
of levels, long keys of multibyte characters, empty objects and lists, odd "ts" forms), bodies
near and above `http.max_body_bytes` (sent whole or chunked), wrong content types, gzip bodies,
and random tokens (unicode %-encoded, invalid %-escapes, very long).

Property of every example: the answer is 200, or 400/401/413 with a JSON body
{"status", "error", "message"} (never 500, never a connection closed without an answer), and a
known-good post right after it still gets 200. At the end: the process is alive, the event log
holds every post answered 200 exactly once and in answer order (and nothing else), and the log
has no ERROR line and no traceback.

The one known limit (README "Known limits": a request aiohttp's own parser refuses, e.g. a request
line over 8190 bytes, gets aiohttp's text/plain 400) is kept out of the properties (tokens up to
MAX_TOKEN_QUOTED) and pinned by the strict-xfail test at the end of the file. The defects found
earlier (integer literals over 4300 digits, Content-Encoding: gzip over a plain body, tokens with
braces) are fixed; their regression tests are at the end of the file and the strategies send them.

Default run: 300 examples per property, derandomized (reproducible in CI); with --soak
(the `soak` fixture) 5,000.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import string
import sys
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edge_sync.api.payloads import parse_attributes, parse_telemetry
from edge_sync.common.json_body import parse_values_json
from edge_sync.storage.records import Action
from tests.helpers.agent import Agent, NoAnswer, Response, read_counts, read_log
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

MAX_BODY = 32 * 1024
DEADLINE_S = 10.0
TOKEN = "fuzz-device-token-5f0c2a"
DEFAULT_EXAMPLES = 300
SOAK_EXAMPLES = 5_000
NO_TS = -1
"""The time the oracle stamps an entry without ``ts`` with (expected_events)."""
REFUSALS = {400, 401, 413}
REASONS = {400: "bad request", 401: "unauthorized", 413: "payload too large"}

HUGE_INT_DIGITS = 6000
"""Longest integer literal the strategies write; over 4300 digits Python refuses to convert it
(test_integer_literal_over_4300_digits_is_400)."""

MAX_TOKEN_QUOTED = 7000
"""Longest %-encoded token sent: a request line over aiohttp's 8190 bytes is the known limit
(test_requests_refused_by_the_http_parser_get_json_and_no_traceback)."""


# -- the shared agent and what it was told -------------------------------------------------------


@dataclass
class Fuzz:
    """The agent, its one device and every post it answered 200, as the events they must be."""

    agent: Agent
    device_id: uuid.UUID
    expected: list[tuple[str, Any]] = field(default_factory=list)  # (action, body) in order
    statuses: Counter[int] = field(default_factory=Counter)
    good: int = 0
    completed: set[str] = field(default_factory=set)  # properties that ran to the end

    def post(self, what: str, body: bytes | Iterator[bytes], *, token: str = TOKEN,
             content_type: str | None = "application/json",
             headers: dict[str, str] | None = None, plain: bytes | None = None) -> Response:
        """POST to /api/v1/{token}/{what} on a fresh connection and check the answer's shape.
        ``plain``: the JSON body as the server will read it (when ``body`` is encoded or an
        iterator of chunks)."""
        resp = request(self.agent.http_port, "POST", f"/api/v1/{token}/{what}", body,
                       content_type=content_type, headers=headers)
        self.statuses[resp.status] += 1
        check_answer(resp)
        if resp.status == 200:
            assert urllib.parse.unquote(token) == TOKEN, f"a post with token {token!r} was accepted"
            raw = plain if plain is not None else body
            assert isinstance(raw, bytes)
            self.expected.extend(expected_events(what, raw))
        return resp

    def post_good(self) -> None:
        """A known-good post; it must be accepted whatever came before."""
        self.good += 1
        resp = self.post("telemetry", json.dumps({"good": self.good}).encode())
        assert resp.status == 200, (resp.status, resp.body)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    with Agent(tmp_path_factory.mktemp("fuzz-device-api"),
               env={"EDGE_HTTP_MAX_BODY_BYTES": str(MAX_BODY)}) as agent:
        agent.start()
        resp = agent.admin("POST", "/api/devices", {"name": "fuzzed", "token": TOKEN})
        assert resp.status == 201, resp.body
        f = Fuzz(agent, uuid.UUID(resp.json()["id"]))
        f.post_good()
        yield f


def examples(soak: bool) -> settings:
    return settings(
        max_examples=SOAK_EXAMPLES if soak else DEFAULT_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )


# -- HTTP ------------------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body: bytes | Iterator[bytes] | None, *,
            content_type: str | None, headers: dict[str, str] | None = None,
            timeout: float = 20.0) -> Response:
    """One request on its own connection; NoAnswer when no response came back."""
    hdrs = dict(headers or {})
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=hdrs,
                     encode_chunked=body is not None and not isinstance(body, bytes))
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise NoAnswer(f"{method} {path[:80]}: {exc!r}") from exc
    finally:
        conn.close()
    return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


def check_answer(resp: Response) -> None:
    """200 with no error, or a documented refusal with its JSON error body."""
    if resp.status == 200:
        return
    assert resp.status in REFUSALS, f"answered {resp.status}: {resp.body[:300]!r}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = json.loads(resp.body)
    assert set(body) == {"status", "error", "message"}, body
    assert body["status"] == resp.status
    assert body["error"] == REASONS[resp.status]
    assert isinstance(body["message"], str) and body["message"].strip(), body


# -- what an accepted body must become ------------------------------------------------------------


@contextlib.contextmanager
def deep_recursion() -> Iterator[None]:
    """The server parsed it on a shallower stack; give this process room to parse and compare."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def expected_events(what: str, raw: bytes) -> list[tuple[str, Any]]:
    """The events an accepted body becomes (README: one per telemetry entry with a pair; one
    per attributes post with a pair), as (action, body) with telemetry's server-side ts left
    as None. Values as the device API reads them, as ThingsBoard does (nulls skipped, numeric
    strings cast: api/tb_values.py, case by case in tests/unit/test_tb_values.py)."""
    with deep_recursion():
        body = parse_values_json(raw)
        if what == "attributes":
            values = parse_attributes(body)
            return [(Action.ATTRIBUTES_UPDATED, {"scope": "CLIENT_SCOPE", "kv": dict(values)})] \
                if values else []
        entries = parse_telemetry(body, now_ms=NO_TS)  # a ts the API refuses: none given
    return [(Action.TIMESERIES_UPDATED, {"ts": None if ts == NO_TS else ts, "values": dict(pairs)})
            for ts, pairs in entries]


def same_event(got: Any, action: str, want: dict[str, Any]) -> bool:
    if got.action != action:
        return False
    if action == Action.ATTRIBUTES_UPDATED:
        return bool(got.body == want)
    if want["ts"] is not None and got.body["ts"] != want["ts"]:
        return False
    return bool(got.body["values"] == want["values"])


# -- strategies: JSON as text, so it can hold what json.dumps never writes ----------------------

SURROGATE_STRINGS = ['"\\ud800"', '"a\\udfffb"', '"\\udc00\\ud800"', '"\\ud83d"', '"\\ud83d\\ude00"']
SPECIAL_NUMBERS = ["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1E+9999", "-0", "0.0e0",
                   "1e-400", "18446744073709551615", "18446744073709551616", "-9223372036854775809",
                   "9223372036854775807", "01", "1.", ".5", "+1", "0x10"]
MULTIBYTE = "é€😀中ßЖ\u200b\ufeff"


def _quoted(text: str, ascii_only: bool) -> str:
    return json.dumps(text, ensure_ascii=ascii_only)


json_strings = st.one_of(
    st.builds(_quoted, st.text(max_size=30), st.booleans()),
    st.builds(_quoted, st.text(alphabet=MULTIBYTE, max_size=40), st.booleans()),
    st.sampled_from(SURROGATE_STRINGS),
)
json_keys = st.one_of(
    json_strings,
    st.builds(_quoted, st.text(alphabet=MULTIBYTE, min_size=50, max_size=140), st.booleans()),
    st.sampled_from(['""', '"ts"', '"values"', '"\\u0000"', '"\\ud800"']),
)
json_leaves = st.one_of(
    st.sampled_from(["null", "true", "false", "[]", "{}"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.integers(min_value=1, max_value=HUGE_INT_DIGITS).map(lambda n: "7" * n),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(SPECIAL_NUMBERS),
    json_strings,
)


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=5).map(_array),
                            st.lists(st.tuples(json_keys, inner), max_size=5).map(_object)),
    max_leaves=20,
)


@st.composite
def deeply_nested(draw: st.DrawFn) -> str:
    """Up to thousands of levels, balanced or not, bare or as a telemetry value."""
    depth = draw(st.one_of(st.integers(1, 1200), st.integers(1, 6000)))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"k":', "}"), ('{"k":[', "]}"), ("[{}, ", "]")]))
    core = draw(json_leaves)
    closed = draw(st.sampled_from([depth, depth, 0, depth // 2]))
    nested = opener * depth + core + closer * closed
    return draw(st.sampled_from([nested, '{"v":' + nested + "}",
                                 '{"ts":1,"values":{"v":' + nested + "}}"]))


kv_objects = st.lists(st.tuples(json_keys, st.one_of(json_leaves, json_values)),
                      min_size=0, max_size=6).map(_object)
ts_literals = st.one_of(st.integers(min_value=-3, max_value=2**64).map(str),
                        st.sampled_from(["1.5", '"1"', "true", "null", "1e3", "-0", "[]"]))
ts_entries = st.builds(lambda ts, values: '{"ts":' + ts + ',"values":' + values + "}",
                       ts_literals, st.one_of(kv_objects, json_values))
entries = st.one_of(kv_objects, ts_entries, json_values)
documents = st.one_of(entries, st.lists(entries, max_size=6).map(_array), deeply_nested(),
                      json_values)

# Mostly-valid bodies (so that a good share of examples is accepted and must be stored).
plain_keys = st.text(alphabet=string.ascii_letters + MULTIBYTE + "_-. ", min_size=1, max_size=30)
plain_values = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                           st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
                 lambda inner: st.one_of(st.lists(inner, max_size=4),
                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                 max_leaves=10),
)
plain_objects = st.dictionaries(plain_keys, plain_values, min_size=1, max_size=6)
valid_telemetry = st.one_of(
    plain_objects,
    st.builds(lambda ts, v: {"ts": ts, "values": v}, st.integers(0, 2**63 - 1), plain_objects),
    st.lists(st.one_of(plain_objects, st.builds(lambda ts, v: {"ts": ts, "values": v},
                                                st.integers(0, 2**63 - 1), plain_objects)),
             min_size=1, max_size=5),
).map(lambda doc: json.dumps(doc, ensure_ascii=False).encode())
valid_attributes = plain_objects.map(lambda doc: json.dumps(doc, ensure_ascii=False).encode())


@st.composite
def encoded(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> bytes:
    text = draw(texts)
    how = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "utf-16", "latin-1", "utf-32"]))
    return text.encode(how, errors="replace")


@st.composite
def damaged(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid body cut short, with a byte changed, or with junk appended."""
    body = draw(valid)
    how = draw(st.sampled_from(["truncate", "flip", "append"]))
    if how == "truncate":
        return body[:draw(st.integers(0, max(0, len(body) - 1)))]
    if how == "flip":
        pos = draw(st.integers(0, len(body) - 1))
        return body[:pos] + bytes([draw(st.integers(0, 255))]) + body[pos + 1:]
    return body + draw(st.binary(min_size=1, max_size=20))


def bodies(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        valid,
        st.binary(max_size=400),
        damaged(valid),
        encoded(documents),
        encoded(documents).flatmap(lambda b: damaged(st.just(b)) if b else st.just(b)),
    )


# -- the properties --------------------------------------------------------------------------------


PROPERTIES = {"telemetry", "attributes", "sizes", "envelopes", "reads"}


def _run(fuzz: Fuzz, name: str, prop: Callable[[], None]) -> None:
    prop()
    fuzz.completed.add(name)


@pytest.mark.parametrize(("what", "valid"), [("telemetry", valid_telemetry),
                                              ("attributes", valid_attributes)])
def test_fuzzed_bodies_are_accepted_or_refused_cleanly(
        fuzz: Fuzz, soak: bool, what: str, valid: st.SearchStrategy[bytes]) -> None:
    @examples(soak)
    @given(body=bodies(valid))
    def prop(body: bytes) -> None:
        fuzz.post(what, body)
        fuzz.post_good()

    _run(fuzz, what, prop)


@st.composite
def sized(draw: st.DrawFn) -> tuple[bytes, bool, int]:
    """A valid telemetry body of an exact size near or above the limit; sent chunked or not."""
    size = draw(st.one_of(st.integers(MAX_BODY - 64, MAX_BODY + 64),
                          st.integers(MAX_BODY - 4096, 3 * MAX_BODY)))
    fill = draw(st.sampled_from(["z", "é", "😀", "\\u00e9"]))
    head, tail = b'{"pad":"', b'"}'
    room = size - len(head) - len(tail)
    unit = fill.encode()
    pad = unit * (room // len(unit))
    pad += b"y" * (room - len(pad))
    body = head + pad + tail
    assert len(body) == size
    return body, draw(st.booleans()), draw(st.integers(512, 40_000))


def test_bodies_near_and_above_the_size_limit(fuzz: Fuzz, soak: bool) -> None:
    @examples(soak)
    @given(case=sized())
    def prop(case: tuple[bytes, bool, int]) -> None:
        body, chunked, chunk = case
        sent: bytes | Iterator[bytes] = body
        if chunked:
            sent = iter([body[i:i + chunk] for i in range(0, len(body), chunk)])
        resp = fuzz.post("telemetry", sent, plain=body)
        if len(body) <= MAX_BODY:
            assert resp.status == 200, (len(body), resp.body)
        else:
            assert resp.status == 413, (len(body), resp.body)
        fuzz.post_good()

    _run(fuzz, "sizes", prop)


def _quote(token: str) -> str:
    return urllib.parse.quote(token, safe="")


tokens = st.one_of(
    st.text(min_size=1, max_size=200).map(_quote),
    st.text(alphabet=string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@", min_size=1,
            max_size=80),
    st.integers(100, 1150).map(lambda n: _quote("é" * n)),
    st.integers(256, MAX_TOKEN_QUOTED).map(lambda n: "t" * n),
    st.lists(st.sampled_from(["%", "%%", "%zz", "%c3", "%ED%A0%80", "%FF", "%00", "%2F", "%2e",
                              "%5C", "%0A", "%20", "+", "x"]), min_size=1, max_size=12).map("".join),
    st.sampled_from(["%2e%2e", "..", "...", TOKEN.upper(), TOKEN + "%20", _quote(" " + TOKEN),
                     TOKEN[:-1], _quote(TOKEN + "\u0000")]),
).filter(lambda t: urllib.parse.unquote(t) != TOKEN and len(t) <= MAX_TOKEN_QUOTED)

content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                     "multipart/form-data; boundary=xyz", "application/json; charset=utf-16",
                     "application/octet-stream", "", "*/*", "application/json; charset=\u00e9"
                     .encode().decode("latin-1")]),
    st.text(alphabet=string.printable.strip("\r\n\x0b\x0c"), max_size=80),
)


@st.composite
def requests_with_odd_envelopes(draw: st.DrawFn) -> tuple[str, str, bytes, str | None, str]:
    token = draw(st.one_of(tokens, st.just(TOKEN)))
    what = draw(st.sampled_from(["telemetry", "attributes"]))
    body = draw(valid_telemetry if what == "telemetry" else valid_attributes)
    if draw(st.integers(0, 3)) == 0:
        body = draw(bodies(st.just(body)))
    encoding = draw(st.sampled_from(["none", "gzip", "gzip-header-over-plain"]))
    return token, what, body, draw(content_types), encoding


def test_fuzzed_tokens_content_types_and_encodings(fuzz: Fuzz, soak: bool) -> None:
    @examples(soak)
    @given(case=requests_with_odd_envelopes())
    def prop(case: tuple[str, str, bytes, str | None, str]) -> None:
        token, what, body, content_type, encoding = case
        if encoding == "gzip":
            resp = fuzz.post(what, gzip.compress(body), token=token, content_type=content_type,
                             headers={"Content-Encoding": "gzip"}, plain=body)
        elif encoding == "gzip-header-over-plain":  # says gzip, is not: never accepted
            resp = fuzz.post(what, body, token=token, content_type=content_type,
                             headers={"Content-Encoding": "gzip"})
            assert resp.status != 200, resp.status
        else:
            resp = fuzz.post(what, body, token=token, content_type=content_type)
        if token != TOKEN:
            assert resp.status in (400, 401, 413), resp.status
        fuzz.post_good()

    _run(fuzz, "envelopes", prop)


def test_attribute_reads_with_fuzzed_tokens_and_keys(fuzz: Fuzz, soak: bool) -> None:
    keys = st.one_of(st.none(), st.text(max_size=300).map(_quote),
                     st.lists(plain_keys, max_size=5).map(lambda ks: _quote(",".join(ks))))

    @examples(soak)
    @given(token=st.one_of(tokens, st.just(TOKEN)), client=keys, shared=keys)
    def prop(token: str, client: str | None, shared: str | None) -> None:
        query = "&".join(f"{name}={v}" for name, v in (("clientKeys", client), ("sharedKeys", shared))
                         if v is not None)
        resp = request(fuzz.agent.http_port, "GET",
                       f"/api/v1/{token}/attributes" + (f"?{query}" if query else ""), None,
                       content_type=None)
        fuzz.statuses[resp.status] += 1
        check_answer(resp)
        if token == TOKEN:
            assert resp.status == 200, resp.body
            assert set(json.loads(resp.body)) <= {"client", "shared"}
        else:
            assert resp.status == 401, resp.body
        fuzz.post_good()

    _run(fuzz, "reads", prop)


# -- after all of that -----------------------------------------------------------------------------


def test_the_agent_survived_and_kept_exactly_what_it_accepted(fuzz: Fuzz) -> None:
    fuzz.post_good()
    agent = fuzz.agent
    assert agent.running, agent.stderr_text()[-3000:]
    assert agent.admin("GET", "/api/status").status == 200

    events = [e for e in read_log(agent.data_dir) if e.entity_id == fuzz.device_id]
    assert [e.action for e in events[:2]] == [Action.ADDED, Action.CREDENTIALS_UPDATED]
    stored = events[2:]
    assert len(stored) == len(fuzz.expected), (len(stored), len(fuzz.expected))
    with deep_recursion():
        for i, (event, (action, body)) in enumerate(zip(stored, fuzz.expected, strict=True)):
            assert same_event(event, action, body), (i, event.seq, str(body)[:300])
    assert len({e.seq for e in stored}) == len(stored)
    others = [e for e in read_log(agent.data_dir) if e.entity_id != fuzz.device_id]
    assert others == [], f"events of other entities: {others[:3]}"

    refused = sum(n for status, n in fuzz.statuses.items() if status != 200)

    def refusal_lines() -> list[dict[str, Any]]:
        return [r for r in agent.log_records()
                if r.get("component") == "device-http" and "refused with" in r.get("message", "")]

    # the last lines may still be on their way to the file
    refusals = wait_until(lambda: lines if len(lines := refusal_lines()) >= refused else None,
                          timeout=DEADLINE_S, what=f"{refused} refusals logged",
                          show=lambda: f"{len(refusal_lines())} logged; statuses {fuzz.statuses}")
    assert len(refusals) == refused, (len(refusals), fuzz.statuses)  # each logged once
    assert all(r["level"] == "WARNING" for r in refusals)
    records = agent.log_records()
    bad = [r for r in records if r.get("level") in ("ERROR", "CRITICAL") or r.get("exception")]
    assert bad == [], [str(r)[:400] for r in bad[:5]]
    assert "Traceback" not in agent.stderr_text()
    assert fuzz.statuses[200] >= fuzz.good
    if fuzz.completed >= PROPERTIES:  # the whole module ran: the fuzzing reached every outcome
        assert fuzz.statuses[200] - fuzz.good >= 100, fuzz.statuses
        assert min(fuzz.statuses[400], fuzz.statuses[401]) >= 100, fuzz.statuses
        assert fuzz.statuses[413] >= 30, fuzz.statuses


# -- regression tests for the defects the fuzzing found --------------------------------------------


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """A second agent for the known defects, so their ERROR lines stay out of the fuzzed log."""
    with Agent(tmp_path_factory.mktemp("fuzz-regressions"),
               env={"EDGE_HTTP_MAX_BODY_BYTES": str(MAX_BODY)}) as agent:
        agent.start()
        resp = agent.admin("POST", "/api/devices", {"name": "lone", "token": TOKEN})
        assert resp.status == 201, resp.body
        yield agent


def _refusal_records(agent: Agent, before: int) -> list[dict[str, Any]]:
    """The log records since ``before``, once the one saying the request was refused is there
    (it may reach the file just after the answer)."""
    def logged() -> list[dict[str, Any]] | None:
        fresh = agent.log_records()[before:]
        said = [r for r in fresh if "refused with" in r.get("message", "")
                or "refused by the parser" in r.get("message", "")]
        return fresh if said else None

    return wait_until(logged, timeout=DEADLINE_S, what="the refusal's log line",
                      show=lambda: agent.log_records()[before:])


def _assert_clean_refusal(agent: Agent, resp: Response, before: int,
                          statuses: frozenset[int] = frozenset({400})) -> None:
    """A documented refusal with the JSON error body, no ERROR line or traceback in the log,
    and the agent still accepting."""
    assert resp.status in statuses, (resp.status, resp.body[:300])
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    out = json.loads(resp.body)
    assert set(out) == {"status", "error", "message"} and out["status"] == resp.status, out
    fresh = _refusal_records(agent, before)
    assert [r for r in fresh if r.get("level") == "ERROR" or r.get("exception")] == [], \
        [str(r)[:300] for r in fresh]
    assert {r["level"] for r in fresh} == {"WARNING"}, [str(r)[:300] for r in fresh]
    refusals = [r["message"] for r in fresh if r.get("component") == "device-http"]
    assert len(refusals) == 1 and f"refused with {resp.status}: " in refusals[0], refusals
    assert agent.post_telemetry(TOKEN, {"after": 1}) == 200


def test_integer_literal_over_4300_digits_is_400(lone: Agent) -> None:
    before = len(lone.log_records())
    body = b'{"v": ' + b"7" * 4301 + b"}"
    resp = request(lone.http_port, "POST", f"/api/v1/{TOKEN}/telemetry", body,
                   content_type="application/json")
    _assert_clean_refusal(lone, resp, before)


def test_gzip_content_encoding_over_a_plain_body_is_400(lone: Agent) -> None:
    before = len(lone.log_records())
    resp = request(lone.http_port, "POST", f"/api/v1/{TOKEN}/telemetry", b'{"v": 1}',
                   content_type="application/json", headers={"Content-Encoding": "gzip"})
    _assert_clean_refusal(lone, resp, before)


@pytest.mark.xfail(strict=True, reason=(
    "KNOWN LIMIT (README, Known limits): requests aiohttp's own parser refuses before any handler runs (a "
    "request line over 8190 bytes, e.g. a long %-encoded token; an unsupported "
    "Content-Encoding) get aiohttp's text/plain 400 instead of the documented JSON error. "
    "They are logged as one WARNING line without a traceback (edge_sync/logsetup.py)"))
@pytest.mark.parametrize(("path", "headers", "statuses"), [
    (f"/api/v1/{urllib.parse.quote('é' * 1400, safe='')}/telemetry", {}, {400, 401, 414}),
    (f"/api/v1/{TOKEN}/telemetry", {"Content-Encoding": "br"}, {400, 415}),
], ids=["request-line-over-8190-bytes", "content-encoding-br"])
def test_requests_refused_by_the_http_parser_get_json_and_no_traceback(
        lone: Agent, path: str, headers: dict[str, str], statuses: set[int]) -> None:
    before = len(lone.log_records())
    resp = request(lone.http_port, "POST", path, b'{"v": 1}', content_type="application/json",
                   headers=headers)
    _assert_clean_refusal(lone, resp, before, frozenset(statuses))


def _events_of(agent: Agent, name: str) -> list[Any]:
    ids = {e.entity_id for e in read_log(agent.data_dir)
           if e.action == Action.ADDED and e.body.get("name") == name}
    return [e for e in read_log(agent.data_dir) if e.entity_id in ids]


@pytest.mark.parametrize("quoted", [True, False], ids=["percent-encoded", "raw-braces"])
def test_a_token_with_braces_the_agent_provisions_can_post(lone: Agent, quoted: bool) -> None:
    name, token = f"braces-{quoted}", f"tok{{{int(quoted)}}}"
    resp = lone.admin("POST", "/api/devices", {"name": name, "token": token})
    assert resp.status == 201, resp.body
    assert resp.json()["token"] == token
    path_token = urllib.parse.quote(token, safe="") if quoted else token
    assert lone.post_telemetry(path_token, {"v": 7}) == 200
    events = _events_of(lone, name)
    assert [e.action for e in events] == [Action.ADDED, Action.CREDENTIALS_UPDATED,
                                          Action.TIMESERIES_UPDATED]
    assert events[2].body["values"] == {"v": 7}


@pytest.mark.parametrize("token", ["tok/1", " tok-1", "", "t" * 256],
                         ids=["slash", "leading-space", "empty", "256-bytes"])
def test_a_token_the_agent_cannot_route_is_refused_at_provisioning(lone: Agent, token: str) -> None:
    """A 400 at provisioning means: the JSON error body says why, and nothing was stored."""
    name = f"refused-{len(token)}-{token[:2].strip() or 'x'}"
    before = read_counts(lone.data_dir)
    resp = lone.admin("POST", "/api/devices", {"name": name, "token": token})
    assert resp.status == 400, resp.body
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert json.loads(resp.body) == {
        "status": 400, "error": "bad request",
        "message": "access token must be 1 to 255 bytes without '/' or surrounding spaces"}
    assert read_counts(lone.data_dir) == before  # no event, no seq consumed
    assert _events_of(lone, name) == []
    # nor the name: it is still free
    assert lone.admin("POST", "/api/devices", {"name": name}).status == 201
