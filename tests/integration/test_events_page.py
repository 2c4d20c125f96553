"""The Cloud Events page in a real browser: headless Debian chromium driven by Playwright, against
a real ``edge-sync run`` (and ``edge-cloud serve`` for the link). The store is written directly
(tests/helpers/event_store.py: 100,000 events by default, 1,000,000 under --soak) before the
agent starts. Every assertion is exact: seqs, row counts, texts.

Screenshots go to tests/artifacts/ (ignored by git). The first page's server time at one
million events is measured by ``scripts/bench events-page``, not here (no timed assertions).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.helpers import event_store
from tests.helpers.agent import Agent, NoAnswer
from tests.helpers.cloud_proc import CloudProc, link_env, wait_connected, wait_drained
from tests.helpers.wait import wait_until

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "page-test-token-0123456789abcdef"
WAIT_MS = 15_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """build(n): a store of n events, written once per session; each test copies it."""
    cache: dict[int, Path] = {}

    def build(n: int) -> Path:
        if n not in cache:
            path = tmp_path_factory.mktemp("events") / "data"
            event_store.build(path, n)
            cache[n] = path
        return cache[n]

    return build


def start_agent(tmp_path: Path, procs: Any, source: Path | None,
                env: dict[str, str] | None = None) -> Agent:
    data = tmp_path / "data"
    if source is not None:
        shutil.copytree(source, data)
    return procs(Agent(tmp_path / "edge", data_dir=data, env=env)).start()


def open_page(browser: Browser, agent: Agent, *, width: int = 1280, height: int = 900) -> Page:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(f"http://127.0.0.1:{agent.admin_port}/")
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def seq_cells(page: Page) -> Any:
    return page.locator("#events tbody tr td.seq")


def expect_seqs(page: Page, seqs: list[int]) -> None:
    """The table shows exactly these seqs, in this order (waits for the refresh)."""
    if seqs:
        expect(seq_cells(page)).to_have_text([str(s) for s in seqs], timeout=WAIT_MS)
    else:
        expect(seq_cells(page)).to_have_count(0, timeout=WAIT_MS)
        expect(page.locator("#empty")).to_be_visible()


def card(page: Page, name: str) -> Any:
    return page.locator(f"#h-{name}")


def apply(page: Page, **fields: str) -> None:
    page.click("#clear-filters")
    for name, value in fields.items():
        target = page.locator(f"#filters [name={name}]")
        if name in ("status", "limit"):
            target.select_option(value)
        else:
            target.fill(value)
    page.click("#apply")


@pytest.mark.parametrize("n", [100_000, pytest.param(1_000_000, marks=pytest.mark.soak)])
def test_page_lists_filters_and_pages_a_large_log(n: int, tmp_path: Path, procs: Any,
                                                  browser: Browser, built: Any) -> None:
    agent = start_agent(tmp_path, procs, built(n))
    page = open_page(browser, agent)
    page.uncheck("#live")  # the table moves only when the test acts
    newest = list(range(n, n - 50, -1))
    expect_seqs(page, newest)
    first = page.locator("#events tbody tr").first
    expect(first.locator("td").nth(1)).to_have_text(f"2026-01-01T00:{_mmss(n)}.000Z")
    expect(first.locator("td.entity b")).to_have_text("press-10")
    expect(first.locator("td.st")).to_have_text("PENDING")
    expect(page.locator("#range")).to_have_text(f"seq {n} … {n - 49} · 50 rows")
    expect(card(page, "queue").locator(".value")).to_have_text("10")
    expect(card(page, "queue")).to_have_attribute("data-level", "healthy")
    expect(card(page, "dead").locator(".value")).to_have_text("2")
    expect(card(page, "dead").locator(".level")).to_have_text("! Degraded")
    expect(card(page, "link").locator(".value")).to_have_text("Not configured")
    shot(page, f"events-page-{n}")

    # paging: older twice, newer once, newest
    page.click("#older")
    expect_seqs(page, list(range(n - 50, n - 100, -1)))
    page.click("#older")
    expect_seqs(page, list(range(n - 100, n - 150, -1)))
    page.click("#newer")
    expect_seqs(page, list(range(n - 50, n - 100, -1)))
    page.click("#newest")
    expect_seqs(page, newest)
    expect(page.locator("#newer")).to_be_disabled()

    # the dead letters, with their error and entity names
    apply(page, status="DEAD")
    expect_seqs(page, [8, 7])
    rows = page.locator("#events tbody tr")
    expect(rows.locator("td.error")).to_have_text([event_store.DEAD_ERROR] * 2)
    expect(rows.locator("td.entity b")).to_have_text(["press-08", "press-07"])
    expect(rows.locator("button.replay")).to_have_count(2)
    expect(page.locator("#older")).to_be_disabled()

    # one entity's events (the entity index), newest first, then one page older
    apply(page, entity=str(event_store.device_id(2)))
    top = n - 7  # the highest seq of press-03 (seq % 10 == 3)
    expect_seqs(page, list(range(top, top - 500, -10)))
    expect(rows.locator("td.entity b")).to_have_text(["press-03"] * 50)
    page.click("#older")
    expect_seqs(page, list(range(top - 500, top - 1000, -10)))

    # action + status (checked event by event within the scan budget)
    apply(page, action="ATTRIBUTES_UPDATED", status="DEPLOYED", limit="25")
    expect_seqs(page, list(range(n - 10, n - 260, -10)))

    # a time range: the second 00:01:00 holds seqs 60,001..61,000
    apply(page, **{"from": "2026-01-01T00:01:00", "to": "2026-01-01T00:01:00"})
    expect_seqs(page, list(range(61_000, 60_950, -1)))
    expect(page.locator("#newer")).to_be_disabled()
    page.click("#older")
    expect_seqs(page, list(range(60_950, 60_900, -1)))

    # nothing of a type the log does not hold (a bounded scan per page)
    apply(page, type="ALARM")
    expect(seq_cells(page)).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator("#range")).to_have_text(
        "0 rows · scanned 10000 events: more may match, page on to continue")
    expect(page.locator("#older")).to_be_enabled()

    # a phone's screen: one card per event
    small = open_page(browser, agent, width=390, height=844)
    expect_seqs(small, newest)
    expect(small.locator("#events thead")).not_to_be_in_viewport()
    shot(small, f"events-page-{n}-phone")


def _mmss(seq: int) -> str:
    second = (seq - 1) // event_store.PER_COMMIT
    return f"{second // 60:02d}:{second % 60:02d}"


def test_page_works_with_the_admin_token(tmp_path: Path, procs: Any, browser: Browser,
                                         built: Any) -> None:
    """The shell loads without the token (it holds no data); the data needs it. The page asks
    for it, keeps it in sessionStorage and sends it as a bearer token."""
    data = tmp_path / "data"
    shutil.copytree(built(1_000), data)
    agent = procs(Agent(tmp_path / "edge", data_dir=data, env={"EDGE_ADMIN_TOKEN": TOKEN}))
    agent.spawn()  # (Agent.start waits for /api/status, which needs the token here)
    wait_until(lambda: _answers(agent, "/healthz"), timeout=20, what="the agent's /healthz")
    assert agent.admin("GET", "/").status == 200
    assert agent.admin("GET", "/api/cloud-events").status == 401
    page = open_page(browser, agent)
    expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
    expect(seq_cells(page)).to_have_count(0)
    page.fill("#token", "not-the-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("wrong token", timeout=WAIT_MS)
    page.fill("#token", TOKEN)
    page.click("#login button[type=submit]")
    expect_seqs(page, list(range(1_000, 950, -1)))
    expect(page.locator("#login")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('edge-sync-admin-token')") == TOKEN
    page.reload()  # the tab keeps it
    expect_seqs(page, list(range(1_000, 950, -1)))
    assert TOKEN not in agent.stderr_text()


def _answers(agent: Agent, path: str) -> bool:
    try:
        return agent.admin("GET", path).status == 200
    except NoAnswer:
        return False


def test_health_turns_to_warning_when_the_cloud_is_down_and_the_queue_grows(
        tmp_path: Path, procs: Any, browser: Browser) -> None:
    cloud = procs(CloudProc(tmp_path / "cloud")).start()
    cloud.create_edge("edge-page", "rk-page", "secret-page")
    env = link_env(cloud, "rk-page", "secret-page",
                   EDGE_HEALTH_QUEUE_DEPTH_HEALTHY="5", EDGE_HEALTH_QUEUE_DEPTH_WARNING="20",
                   EDGE_HEALTH_SYNC_LATENCY_HEALTHY_S="600",
                   EDGE_HEALTH_SYNC_LATENCY_WARNING_S="1200")
    agent = start_agent(tmp_path, procs, None, env=env)
    wait_connected(agent)
    _, token = agent.create_device("press-page")
    wait_drained(agent)
    page = open_page(browser, agent)
    expect(card(page, "link").locator(".value")).to_have_text("Connected", timeout=WAIT_MS)
    expect(card(page, "overall")).to_have_attribute("data-level", "healthy", timeout=WAIT_MS)
    expect(card(page, "overall").locator(".level")).to_have_text("✓ Healthy")
    shot(page, "health-healthy")

    cloud.kill9()
    for i in range(21):
        assert agent.post_telemetry(token, {"v": i}) == 200
    queue = card(page, "queue")
    expect(queue.locator(".value")).to_have_text("21", timeout=WAIT_MS)
    expect(queue).to_have_attribute("data-level", "warning")
    expect(queue.locator(".level")).to_have_text("✕ Warning")
    expect(card(page, "overall").locator(".level")).to_have_text("✕ Warning")
    expect(card(page, "link").locator(".value")).to_contain_text("Reconnecting (")
    expect(card(page, "link")).to_have_attribute("data-level", "degraded")
    expect(card(page, "latency")).to_have_attribute("data-level", "healthy")
    shot(page, "health-warning")


def test_page_replays_dead_letters(tmp_path: Path, procs: Any, browser: Browser,
                                   built: Any) -> None:
    """NEEDS ``POST /api/dead-letters/replay`` (built with the replay core on its own branch):
    this test exercises that route from the page and fails until it is merged."""
    agent = start_agent(tmp_path, procs, built(1_000))
    page = open_page(browser, agent)
    page.uncheck("#live")
    apply(page, status="DEAD")
    expect_seqs(page, [8, 7])
    page.locator("#events tbody tr[data-seq='8'] button.replay").click()
    expect(page.locator("#message")).to_have_text("Replayed 1 dead letter: seq 8", timeout=WAIT_MS)
    expect_seqs(page, [7])
    expect(card(page, "dead").locator(".value")).to_have_text("1")
    page.click("#replay-all")
    expect(page.locator("#message")).to_have_text("Replayed 1 dead letter: seq 7", timeout=WAIT_MS)
    expect_seqs(page, [])
    expect(card(page, "dead").locator(".value")).to_have_text("0")
    expect(card(page, "dead")).to_have_attribute("data-level", "healthy")
    apply(page, status="PENDING")
    expect_seqs(page, [1_000, 999, 998, 997, 996, 995, 994, 993, 992, 991, 8, 7])
