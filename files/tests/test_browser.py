"""The pages in a real browser: Debian's Chromium driven by Playwright.

Against real daphne and Celery worker processes on the test database: sign in, upload
through the file input and by drag and drop, watch rows change without a reload, read
the uPlot charts, sort the anomalies, see a broken file's position, survive a restart
of the web process, and fall back to polling when WebSockets fail. Screenshots go to
`artifacts/screenshots/`.

What the tests need to look into a page they bring themselves, as init scripts
(`PAGE_PROBES`), Playwright routes and WebSocket listeners: the pages' scripts keep
nothing for them.
"""

import hashlib
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from conftest import Process, free_port, live_env, start_web, wait_for
from files import services
from files.models import AnomalyRule, File, Upload

from .factories import (
    METRIC_NAMES,
    broken_bytes,
    expected_anomalies,
    metrics_bytes,
    server_4_bytes,
    upload,
    user_create,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(settings.BASE_DIR) / "artifacts" / "screenshots"
PASSWORD = "pw-test-123"  # factories.user_create's
TIMEOUT_MS = 45_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="no /usr/bin/chromium (Debian's chromium package; .ci/run installs it)",
    ),
]

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect


# --- the browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def _sync_orm_under_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an asyncio loop marked running in this thread,
    which Django's ORM reads as an async context; the tests' ORM calls are plain
    synchronous code, so allow them for this module only."""
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    yield
    if saved is None:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


@pytest.fixture(scope="module")
def browser(_sync_orm_under_playwright):
    """Chromium for this module only: its event loop must not outlive these tests."""
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        expect.set_options(timeout=TIMEOUT_MS)
        yield chromium
        chromium.close()


# Run in every page before its own scripts: `window.__loadId`, new at each load
# (a reload changes it), and `window.__plots`, every uPlot chart the page draws (the
# charts' data, as a test reads it), caught as the library defines `window.uPlot`.
PAGE_PROBES = """
window.__loadId = crypto.randomUUID();
(() => {
  const plots = window.__plots = [];
  let wrapped;
  Object.defineProperty(window, 'uPlot', {
    configurable: true,
    get: () => wrapped,
    set: (real) => {
      wrapped = new Proxy(real, {
        construct(target, args) {
          const plot = Reflect.construct(target, args);
          plots.push(plot);
          return plot;
        },
      });
    },
  });
})();
"""


def new_page(browser, **options):
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(PAGE_PROBES)
    return context, context.new_page()


@pytest.fixture
def page(browser):
    context, tab = new_page(browser, viewport={"width": 1280, "height": 900})
    yield tab
    context.close()


@pytest.fixture
def account(rules):
    return user_create()


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def sign_in(page, base_url: str, user) -> None:
    """Through the login form, as a person would."""
    page.goto(f"{base_url}/")
    expect(page).to_have_url(f"{base_url}/login/?next=/")
    page.get_by_label("Username", exact=True).fill(user.username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base_url}/")
    expect(page.locator(".site-user__name")).to_have_text(user.username)
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")


def choose_file(page, tmp_path: Path, name: str, content: bytes) -> None:
    """Upload through the page's file input."""
    path = tmp_path / name
    path.write_bytes(content)
    page.set_input_files("#upload-input", str(path))


def uploaded(page, tmp_path: Path, name: str, content: bytes, until: str = "processed"):
    """Upload through the page's file input and wait for its row to show `until`:
    the row."""
    choose_file(page, tmp_path, name, content)
    file_row = row(page, name)
    expect(file_row.locator("[data-role=status]")).to_have_text(
        until, timeout=TIMEOUT_MS
    )
    return file_row


def row(page, name: str):
    return page.locator("tr.file-row").filter(
        has=page.locator("[data-role=name]", has_text=name)
    )


def mark_page(page) -> None:
    """A marker that a reload would wipe out."""
    page.evaluate("window.__notReloaded = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__notReloaded === true"), "the page was reloaded"


def chart_figure(page, metric: str):
    return page.locator(f"figure.chart[data-metric={metric}]")


def drawn(figure):
    """uPlot's drawing in a chart's figure (there once the chart is drawn)."""
    return figure.locator(".uplot")


def drag_across(page, figure) -> None:
    """Drag the mouse across the middle of a chart, from 20% to 60% of its width."""
    figure.scroll_into_view_if_needed()
    box = figure.locator(".u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(
        box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2, steps=8
    )
    page.mouse.up()


def zoom_reset(figure):
    """The chart's "Reset zoom" button: visible while it is zoomed in."""
    return figure.get_by_role("button", name="Reset zoom")


# The chart a figure shows now: its buckets (uPlot's columns: time, min, max, mean,
# above the range, below it), read from the plots PAGE_PROBES caught.
CHART = """(metric) => {
  const plot = window.__plots.filter(p => p.root.isConnected
    && p.root.closest('figure').dataset.metric === metric).pop();
  if (!plot) return null;
  const [xs, , , means, above, below] = plot.data;
  return {
    points: xs.length,
    marks: xs.filter((x, i) => above[i] !== null || below[i] !== null).length,
    above: above.filter(v => v !== null),
    means,
  };
}"""


def chart(page, metric: str) -> dict:
    return page.evaluate(CHART, metric)


# --- scenarios --------------------------------------------------------------------


def test_upload_is_processed_live_and_charted(page, live_stack, account, tmp_path):
    sign_in(page, live_stack.base_url, account)
    mark_page(page)

    file_row = uploaded(page, tmp_path, "server_4.json", server_4_bytes())
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("27")
    expect(file_row.locator("[data-role=records]")).to_have_text("9")
    expect(file_row.locator("[data-role=kind]")).to_have_text("server_metrics")
    expect(page.locator("#toasts .toast").first).to_be_visible()
    assert_not_reloaded(page)
    screenshot(page, "01-dashboard-processed")

    file_row.locator("[data-role=name]").click()
    cpu = chart_figure(page, "cpu_usage")
    expect(drawn(cpu)).to_have_count(1)
    expect(page.locator("figure.chart .uplot")).to_have_count(7)
    expect(cpu.locator(".uplot canvas")).to_have_count(1)
    # Nine one-record buckets, every one of them above cpu_usage's 0-85 range.
    cpu_chart = chart(page, "cpu_usage")
    assert cpu_chart["points"] == 9
    assert cpu_chart["marks"] == 9
    assert chart(page, "disk_read")["marks"] == 2
    pixels = page.evaluate(
        """() => {
          const canvas = document.querySelector(
            'figure.chart[data-metric=cpu_usage] canvas');
          const pixels = canvas.getContext('2d')
            .getImageData(0, 0, canvas.width, canvas.height).data;
          let painted = 0, red = 0;
          for (let i = 0; i < pixels.length; i += 4) {
            if (pixels[i + 3] > 0) painted++;
            if (pixels[i + 3] > 200 && pixels[i] > 150 && pixels[i + 1] < 90
                && pixels[i + 2] < 90) red++;
          }
          return {painted, red};
        }"""
    )
    assert pixels["painted"] > 1000
    assert pixels["red"] > 50, "the anomaly marks are not drawn"
    assert cpu_chart["above"] == [187, 276, 700, 320, 630, 340, 350, 860, 92]
    assert cpu_chart["means"][0] == 187
    anomalies = page.locator("#anomalies-table tbody tr")
    expect(anomalies).to_have_count(27)
    screenshot(page, "02-file-page-charts")
    cpu.screenshot(path=str(SCREENSHOTS / "02b-cpu-chart.png"))

    # Drag across the chart: uPlot zooms in and offers a reset.
    drag_across(page, cpu)
    reset = zoom_reset(cpu)
    expect(reset).to_be_visible()
    screenshot(page, "03-chart-zoomed", full_page=False)
    reset.click()
    expect(reset).to_be_hidden()

    # The anomalies sort by value, both ways.
    page.locator("#anomalies-table thead a[data-sort=value]").click()
    expect(page).to_have_url(re.compile(r"/f/\d+/\?sort=value#anomalies$"))
    values = page.locator("#anomalies-table tbody tr td:nth-child(5)")
    expect(values.first).to_have_text("92")
    page.locator("#anomalies-table thead a[data-sort=value]").click()
    expect(values.first).to_have_text("860")
    expect(page.locator("#anomalies-table th[aria-sort=descending]")).to_have_count(1)


def test_tiny_progress_messages_move_the_bars_and_nothing_else(
    page, live_stack, account, sent
):
    """`file.progress` carries no file resource: the row's and the file page's
    status and progress follow it, the name and the rest stay, a stale one (older
    `last_event_id`) is ignored."""
    from notifications.publisher import build_message, send_live

    file = services.file_create(
        owner=account, upload=upload(server_4_bytes(), "p.json")
    )

    def progress(fraction: float, last_event_id: int) -> None:
        fields = {
            "status": "processing",
            "progress": fraction,
            "status_message": f"Processing: {round(fraction * 100)}%",
            "attempts": 2,
            "last_event_id": last_event_id,
        }
        message = build_message("file.progress", file_id=file.pk, fields=fields)
        # From a thread of its own: Playwright runs an event loop in this one.
        sender = threading.Thread(target=send_live, args=(account.pk, message))
        sender.start()
        sender.join(10)

    def until_shown(fraction: float, status) -> None:
        # Live-only messages are at most once: one sent before the socket has
        # joined its user's group is gone, so send until one arrives.
        for _ in range(40):
            progress(fraction, file.last_event_id)
            try:
                expect(status).to_have_text("processing", timeout=250)
                return
            except AssertionError:
                continue
        raise AssertionError("no progress message arrived")

    sign_in(page, live_stack.base_url, account)
    file_row = row(page, "p.json")
    expect(file_row.locator("[data-role=status]")).to_have_text("queued")
    until_shown(0.42, file_row.locator("[data-role=status]"))
    expect(file_row.locator("[data-role=progress]")).to_have_attribute("title", "42%")
    expect(file_row.locator("[data-role=name]")).to_have_text("p.json")
    expect(file_row.locator("[data-role=size]")).to_have_attribute(
        "title", f"{file.size} bytes"
    )
    progress(0.9, file.last_event_id - 1)  # older than what the row shows
    page.wait_for_timeout(500)
    expect(file_row.locator("[data-role=progress]")).to_have_attribute("title", "42%")

    page.goto(f"{live_stack.base_url}/f/{file.pk}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    until_shown(0.57, page.locator("[data-role=status]"))
    expect(page.locator("[data-role=status-message]")).to_have_text("57% done")
    expect(page.locator("[data-role=attempts]")).to_have_text("2")
    expect(page.locator("h1[data-role=name]")).to_have_text("p.json")


def test_broken_file_fails_with_its_position(page, live_stack, account, tmp_path):
    sign_in(page, live_stack.base_url, account)
    file_row = uploaded(page, tmp_path, "broken.json", broken_bytes(), until="failed")
    expect(file_row.locator("[data-role=error]")).to_contain_text("line 13, column 20")
    screenshot(page, "04-dashboard-failed")

    file_row.locator("[data-role=name]").click()
    expect(page.locator("#failure")).to_be_visible()
    expect(page.locator("[data-role=error-line]")).to_have_text("13")
    expect(page.locator("[data-role=error-column]")).to_have_text("20")
    screenshot(page, "05-file-page-failed")


def test_drop_several_files_with_upload_progress(page, live_stack, account):
    sign_in(page, live_stack.base_url, account)
    mark_page(page)
    page.evaluate(
        """(text) => {
          const transfer = new DataTransfer();
          for (const name of ['dropped-1.json', 'dropped-2.json']) {
            transfer.items.add(new File([text], name, {type: 'application/json'}));
          }
          const zone = document.getElementById('upload-form');
          for (const type of ['dragenter', 'dragover', 'drop']) {
            zone.dispatchEvent(new DragEvent(type, {
              dataTransfer: transfer, bubbles: true, cancelable: true
            }));
          }
        }""",
        server_4_bytes().decode(),
    )
    expect(page.locator("#uploads .upload-item")).to_have_count(2)
    expect(page.locator("#uploads .upload-item progress")).to_have_count(2)
    for name in ("dropped-1.json", "dropped-2.json"):
        expect(row(page, name).locator("[data-role=status]")).to_have_text(
            "processed", timeout=TIMEOUT_MS
        )
    assert_not_reloaded(page)
    screenshot(page, "06-dashboard-dropped")

    # Filters and search are server-side query parameters.
    page.get_by_label("Name", exact=True).fill("dropped-2")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tr.file-row")).to_have_count(1)
    expect(row(page, "dropped-2.json")).to_have_count(1)
    page.get_by_label("Status", exact=True).select_option("failed")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#files-empty")).to_contain_text("No file matches")


def long_series_bytes(records: int) -> bytes:
    """One record a minute; cpu_usage climbs 0..79 and spikes every 100th record."""
    start = datetime(2024, 9, 19, tzinfo=UTC)
    return json.dumps(
        {
            "server_id": "server_long",
            "metrics": [
                {
                    "timestamp": (start + timedelta(minutes=n)).isoformat(),
                    **dict.fromkeys(METRIC_NAMES, 10),
                    "cpu_usage": 500 if n % 100 == 99 else n % 80,
                }
                for n in range(records)
            ],
        }
    ).encode()


def long_series_processed(page, live_stack, account, tmp_path, name: str):
    """Signed in, a 3,000-record series uploaded through the page and processed:
    its row."""
    sign_in(page, live_stack.base_url, account)
    file_row = uploaded(page, tmp_path, name, long_series_bytes(3000))
    return file_row


def test_zooming_by_keyboard_fetches_finer_points(page, live_stack, account, tmp_path):
    file_row = long_series_processed(page, live_stack, account, tmp_path, "long.json")
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("30")
    file_row.locator("[data-role=name]").click()
    cpu = chart_figure(page, "cpu_usage")
    expect(drawn(cpu)).to_have_count(1)
    coarse = chart(page, "cpu_usage")["points"]
    assert 50 <= coarse < 3000
    # Each of the 30 spikes is in a bucket of its own whose max is beyond the range.
    assert chart(page, "cpu_usage")["marks"] == 30

    cpu.locator("[data-role=chart-canvas]").focus()
    for _ in range(4):
        page.keyboard.press("+")
    expect(zoom_reset(cpu)).to_be_visible()
    page.wait_for_function(
        f"([metric, coarse]) => ({CHART})(metric).points > coarse",
        arg=["cpu_usage", coarse],
    )
    # Every chart zoomed with it, and the view kept its range while refining (each
    # chart refines on its own request: wait for the last one to be drawn).
    page.wait_for_function(
        """() => [...document.querySelectorAll('figure.chart')].every(figure =>
             !figure.querySelector('[data-role=chart-reset]').hidden
             && figure.querySelector('[data-role=chart-canvas]')
                  .getAttribute('aria-busy') === 'false')"""
    )
    screenshot(page, "13-zoomed-finer-points", full_page=False)
    page.keyboard.press("0")
    expect(zoom_reset(cpu)).to_be_hidden()


def test_a_chart_that_loads_after_a_zoom_joins_it(page, live_stack, account, tmp_path):
    file_row = long_series_processed(page, live_stack, account, tmp_path, "late.json")
    held = []  # the disk_write chart's first request, answered only after the zoom
    page.route(
        re.compile(r".*/metrics/\?metric=disk_write&.*"),
        lambda route: held.append(route) if not held else route.continue_(),
    )
    file_row.locator("[data-role=name]").click()
    cpu = chart_figure(page, "cpu_usage")
    late = chart_figure(page, "disk_write")
    expect(drawn(cpu)).to_have_count(1)
    cpu.locator("[data-role=chart-canvas]").focus()
    page.keyboard.press("+")
    expect(zoom_reset(cpu)).to_be_visible()
    assert drawn(late).count() == 0 and len(held) == 1

    held[0].continue_()
    expect(drawn(late)).to_have_count(1)
    expect(zoom_reset(late)).to_be_visible()


def test_file_page_actions_give_live_feedback(page, live_stack, account, tmp_path):
    sign_in(page, live_stack.base_url, account)
    file_row = uploaded(page, tmp_path, "actions.json", server_4_bytes())
    file_row.locator("[data-role=name]").click()
    status = page.locator("#summary [data-role=status]")
    expect(status).to_have_text("processed")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename == "actions.json"
    expect(page.locator(".toast", has_text="Download started")).to_be_visible()

    mark_page(page)
    page.get_by_role("button", name="Process again").click()
    expect(page.locator(".toast", has_text="Queued again")).to_be_visible()
    # The new results are shown in place once processing is over: no reload.
    expect(page.locator(".toast", has_text="File processed")).to_be_visible()
    expect(status).to_have_text("processed")
    expect(page.locator("figure.chart .uplot")).to_have_count(7)
    assert_not_reloaded(page)

    # Replace: a broken version, uploaded with PUT, fails with its position.
    broken = tmp_path / "actions-v2.json"
    broken.write_bytes(broken_bytes())
    page.set_input_files("#replace-input", str(broken))
    expect(page.locator(".toast", has_text="Replaced")).to_be_visible()
    expect(page.locator("h1[data-role=name]")).to_have_text("actions-v2.json")
    expect(page.locator("[data-role=error-line]")).to_have_text("13")
    expect(status).to_have_text("failed")
    expect(page).to_have_title("actions-v2.json · DwellFi")
    assert_not_reloaded(page)
    screenshot(page, "12-file-page-replaced", full_page=False)

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(f"{live_stack.base_url}/")
    expect(page.locator(".toast", has_text="File deleted")).to_be_visible()
    expect(row(page, "actions-v2.json")).to_have_count(0)
    assert not File.objects.filter(owner=account).exists()


def off_the_loop(service, **kwargs):
    """Call a service from a thread of its own: Playwright runs an event loop in
    this one, and the events it sends after commit need one of their own."""
    result = []

    def call() -> None:
        try:
            result.append(service(**kwargs))
        finally:
            connection.close()

    caller = threading.Thread(target=call)
    caller.start()
    caller.join(30)
    return result[0]


def processed_file(owner, name: str) -> File:
    """server_4.json uploaded by the API and processed by the session's worker."""
    file = off_the_loop(
        services.file_create, owner=owner, upload=upload(server_4_bytes(), name)
    )
    wait_for(
        lambda: File.objects.get(pk=file.pk).status == File.Status.PROCESSED,
        timeout=60,
        what=f"processing {name}",
    )
    return File.objects.get(pk=file.pk)


def test_an_outcome_updates_the_file_page_in_place(page, live_stack, account):
    """Processed again under a wider cpu_usage range: the status, the summary, the
    anomalies table and the charts change in place, the page never reloads (its load
    id survives), and the new charts zoom."""
    file = processed_file(account, "in-place.json")
    sign_in(page, live_stack.base_url, account)
    page.goto(f"{live_stack.base_url}{file.get_absolute_url()}")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    cpu = chart_figure(page, "cpu_usage")
    expect(drawn(cpu)).to_have_count(1)
    assert chart(page, "cpu_usage")["marks"] == 9
    expect(page.locator("#anomalies-table tbody tr")).to_have_count(27)
    load_id = page.evaluate("window.__loadId")

    AnomalyRule.objects.filter(metric="cpu_usage").update(max_value=1000)
    page.get_by_role("button", name="Process again").click()
    expect(page.locator(".toast", has_text="File processed")).to_be_visible()
    expect(page.locator("#summary [data-role=anomalies]")).to_have_text("18")
    expect(page.locator("#anomalies-table tbody tr")).to_have_count(18)
    expect(page.locator("#summary [data-role=status]")).to_have_text("processed")
    expect(drawn(cpu)).to_have_count(1)
    page.wait_for_function(
        f"() => ({CHART})('cpu_usage')?.points === 9"
        f" && ({CHART})('cpu_usage').marks === 0"
    )
    assert page.evaluate("window.__loadId") == load_id, "the page was reloaded"

    drag_across(page, cpu)
    expect(zoom_reset(cpu)).to_be_visible()
    screenshot(page, "14-file-page-updated-in-place", full_page=False)


def test_an_event_updates_the_row_in_place_with_the_servers_partial(
    page, live_stack, account
):
    """The row an event changes is the same element, morphed into what the server's
    row partial (`/f/ID/row/`) renders: no row is drawn by the page's script."""
    file = processed_file(account, "row-in-place.json")
    row_requests = []
    page.on(
        "request",
        lambda request: (
            row_requests.append(request.url)
            if request.url.endswith(f"/f/{file.pk}/row/")
            else None
        ),
    )
    sign_in(page, live_stack.base_url, account)
    file_row = row(page, "row-in-place.json")
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("27")
    file_row.evaluate("row => { row.__kept = true; }")
    link = file_row.locator("[data-role=name]")
    link.focus()  # a keyboard user on the row keeps their place

    AnomalyRule.objects.filter(metric="cpu_usage").update(max_value=1000)
    off_the_loop(services.file_reprocess, file=file, by=account)
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("18")
    expect(file_row.locator("[data-role=status]")).to_have_text("processed")
    assert file_row.evaluate("row => row.__kept === true"), "the row was replaced"
    expect(link).to_be_focused()
    assert row_requests

    partial = page.request.get(
        f"{live_stack.base_url}/f/{file.pk}/row/", headers={"HX-Request": "true"}
    )
    differences = page.evaluate(
        """([id, html]) => {
          const template = document.createElement('template');
          template.innerHTML = html.trim();
          const server = template.content.firstElementChild;
          const shown = document.getElementById(id);
          const differences = [];
          for (const name of ['data-status', 'data-last-event-id']) {
            if (server.getAttribute(name) !== shown.getAttribute(name)) {
              differences.push(name);
            }
          }
          // Every part but the upload time, which the page shows in local time.
          for (const part of server.querySelectorAll('[data-role]')) {
            const role = part.dataset.role;
            const mine = shown.querySelector(`[data-role="${role}"]`);
            if (role !== 'created' && mine.outerHTML !== part.outerHTML) {
              differences.push(role);
            }
          }
          return differences;
        }""",
        [f"file-{file.pk}", partial.text()],
    )
    assert differences == []


# The answers to the page's uploads (POST /api/files/), kept from the page's script
# until the test delivers them: `window.__answers`, each {status, text, deliver()}.
# Playwright's routes cannot hold them: a request's multipart File body is not
# available to `route.fetch()`.
HOLD_UPLOAD_ANSWERS = """
window.__answers = [];
(() => {
  const open = XMLHttpRequest.prototype.open;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.__hold = method === 'POST' && url === '/api/files/';
    return open.call(this, method, url, ...rest);
  };
  const listen = XMLHttpRequest.prototype.addEventListener;
  XMLHttpRequest.prototype.addEventListener = function (type, listener, ...rest) {
    if (type !== 'load') return listen.call(this, type, listener, ...rest);
    const xhr = this;
    return listen.call(this, type, function (event) {
      if (!xhr.__hold) return listener.call(xhr, event);
      window.__answers.push({
        status: xhr.status,
        text: xhr.responseText,
        deliver: () => listener.call(xhr, event),
      });
    }, ...rest);
  };
})();
"""


def test_a_late_upload_answer_does_not_roll_the_row_back(
    page, live_stack, account, tmp_path
):
    """The upload's answer (the file as it was queued) arrives only after the events
    have shown it processed: the row stays as the newer events left it."""
    page.add_init_script(HOLD_UPLOAD_ANSWERS)
    sign_in(page, live_stack.base_url, account)
    file_row = uploaded(page, tmp_path, "late-answer.json", server_4_bytes())
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("27")
    shown = int(file_row.get_attribute("data-last-event-id"))
    answers = page.evaluate("window.__answers.map(a => [a.status, a.text])")
    assert [status for status, _ in answers] == [201]
    queued = json.loads(answers[0][1])
    assert queued["status"] == "queued" and queued["last_event_id"] < shown

    page.evaluate("window.__answers[0].deliver()")
    expect(page.locator("#uploads .upload-item")).to_have_attribute(
        "data-state", "done"
    )
    page.wait_for_timeout(500)  # time enough for a wrongful fetch and swap
    expect(file_row.locator("[data-role=status]")).to_have_text("processed")
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("27")
    assert int(file_row.get_attribute("data-last-event-id")) == shown


def test_phone_layout_is_readable(browser, live_stack, account, tmp_path):
    context, phone = new_page(
        browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        sign_in(phone, live_stack.base_url, account)
        file_row = uploaded(phone, tmp_path, "server_4.json", server_4_bytes())
        # No sideways scrolling: the table turned into one card per file.
        assert phone.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        screenshot(phone, "07-phone-dashboard", full_page=False)
        phone.locator("#files-table").scroll_into_view_if_needed()
        screenshot(phone, "07b-phone-dashboard-files", full_page=False)
        file_row.locator("[data-role=name]").click()
        expect(drawn(chart_figure(phone, "cpu_usage"))).to_have_count(1)
        assert phone.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        screenshot(phone, "08-phone-file-page", full_page=False)
        phone.locator(
            "figure.chart[data-metric=cpu_usage]"
        ).scroll_into_view_if_needed()
        screenshot(phone, "08b-phone-chart", full_page=False)
    finally:
        context.close()


def test_falls_back_to_polling_when_websockets_fail(
    page, live_stack, account, tmp_path
):
    # Every WebSocket fails as a proxy that drops them would make it fail.
    page.add_init_script(
        """
        window.WebSocket = class {
          static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
          constructor(url) {
            this.url = url; this.readyState = 0;
            setTimeout(() => {
              this.readyState = 3;
              if (this.onerror) this.onerror(new Event('error'));
              if (this.onclose) this.onclose({code: 1006, reason: ''});
            }, 10);
          }
          send() {}
          close() {}
        };
        """
    )
    page.goto(f"{live_stack.base_url}/login/")
    page.get_by_label("Username", exact=True).fill(account.username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#conn")).to_have_attribute("data-state", "polling")
    mark_page(page)

    file_row = uploaded(page, tmp_path, "polled.json", server_4_bytes())
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("27")
    assert_not_reloaded(page)
    screenshot(page, "09-dashboard-polling", full_page=False)


# --- a web process of its own, to restart -------------------------------------------


@dataclass
class RestartableWeb:
    """daphne on a fixed port, which a test may stop and start again."""

    env: dict[str, str]
    logdir: Path
    port: int
    process: Process

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restart(self) -> None:
        self.process = start_web(
            self.env, self.logdir, self.port, name="own-web-restarted"
        )


@pytest.fixture
def own_web(live_stack, tmp_path) -> Iterator[RestartableWeb]:
    """A daphne for one test, beside the session's: stopping it disturbs no other
    test. The session's worker (`live_stack`) processes the files."""
    env = live_env(Path(settings.MEDIA_ROOT))
    port = free_port()
    web = RestartableWeb(env, tmp_path, port, start_web(env, tmp_path, port, "own-web"))
    yield web
    web.process.stop()


def event_ids(payload: str | bytes) -> list[int]:
    """The durable event id a WebSocket frame carries, if it does."""
    message = json.loads(payload)
    return [message["id"]] if isinstance(message.get("id"), int) else []


def test_reconnects_and_catches_up_after_a_web_restart(page, own_web, account):
    # The page records every state of the connection indicator, and its sockets.
    page.add_init_script(
        """
        window.__connStates = [];
        new MutationObserver(() => {
          const conn = document.getElementById('conn');
          if (!conn) return;
          const state = conn.dataset.state;
          if (window.__connStates[window.__connStates.length - 1] !== state) {
            window.__connStates.push(state);
          }
        }).observe(document, {subtree: true, attributes: true,
                              attributeFilter: ['data-state']});
        """
    )
    sockets = []
    received = []  # the ids of the durable events the page was sent
    polled = []  # its answers from GET /api/events/ (after failed connections)

    def on_socket(socket) -> None:
        sockets.append(socket.url)
        socket.on("framereceived", lambda payload: received.extend(event_ids(payload)))

    page.on("websocket", on_socket)
    page.on(
        "response",
        lambda response: "/api/events/" in response.url and polled.append(response),
    )

    file = services.file_create(
        owner=account, upload=upload(server_4_bytes(), "restart.json")
    )
    wait_for(
        lambda: File.objects.get(pk=file.pk).status == File.Status.PROCESSED,
        timeout=60,
        what="the first processing",
    )
    sign_in(page, own_web.base_url, account)
    mark_page(page)
    file_row = row(page, "restart.json")
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("27")

    own_web.process.stop(signal.SIGTERM)
    expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting")
    screenshot(page, "10-restart-reconnecting", full_page=False)

    # While daphne is down: a wider cpu_usage range, and the file processed again.
    AnomalyRule.objects.filter(metric="cpu_usage").update(max_value=1000)
    services.file_reprocess(file=File.objects.get(pk=file.pk), by=account)
    wait_for(
        lambda: File.objects.get(pk=file.pk).anomaly_count == 18,
        timeout=60,
        what="processing while the web process is down",
    )
    # The page's cursor: the newest event it has (its first paint's or one it was sent).
    first_paint = page.evaluate(
        "JSON.parse(document.getElementById('last-event-id').textContent)"
    )
    cursor_before = max([first_paint, *received])
    assert cursor_before > 0

    own_web.restart()
    expect(page.locator("#conn")).to_have_attribute(
        "data-state", "connected", timeout=60_000
    )
    expect(file_row.locator("[data-role=anomalies]")).to_have_text("18")
    expect(file_row.locator("[data-role=status]")).to_have_text("processed")
    assert_not_reloaded(page)
    screenshot(page, "11-restart-caught-up", full_page=False)

    states = page.evaluate("window.__connStates")
    first_connected = states.index("connected")
    assert "reconnecting" in states[first_connected:]
    assert states[-1] == "connected"
    # Every socket after the first asked for the events after the page's cursor.
    cursors = [int(re.search(r"after=(\d+)", url).group(1)) for url in sockets[1:]]
    assert cursors and min(cursors) >= cursor_before, sockets
    # The events of the run made while daphne was down reached the page: replayed
    # on the new socket or, when the restart took long enough for the page to
    # poll (a loaded machine), in the answers to its polls.
    for response in polled:
        if response.ok:
            received.extend(event["id"] for event in response.json()["results"])
    assert max(received, default=0) > cursor_before


# --- resumable uploads (tus-js-client) ----------------------------------------------

RESUMABLE_CHUNK = 256 * 1024


@pytest.fixture
def small_chunk_web(live_stack, tmp_path) -> Iterator[RestartableWeb]:
    """A daphne of its own taking chunks of 256 KiB, so that a file of 2 MB is a
    resumable upload of eight chunks. The session's workers process the files."""
    env = {
        **live_env(Path(settings.MEDIA_ROOT)),
        "DWELLFI_UPLOAD_CHUNK_BYTES": str(RESUMABLE_CHUNK),
    }
    port = free_port()
    web = RestartableWeb(env, tmp_path, port, start_web(env, tmp_path, port, "tus-web"))
    yield web
    web.process.stop()


class HeldChunks:
    """Watches the page's chunks (PATCH /api/uploads/ID/): lets them through, but
    holds the ones whose number (from 1) is in `hold` unanswered, as a link that
    stalls would."""

    def __init__(self, page, hold: set[int]) -> None:
        self.page = page
        self.hold = hold
        self.offsets: list[int] = []
        page.route("**/api/uploads/**", self._handle)

    def _handle(self, route, request) -> None:
        if request.method != "PATCH":
            route.continue_()
            return
        self.offsets.append(int(request.headers["upload-offset"]))
        if len(self.offsets) not in self.hold:
            route.continue_()

    def wait_until_held(self, number: int) -> None:
        """Until the page has sent its `number`th chunk (Playwright dispatches the
        route while the page waits)."""
        for _ in range(TIMEOUT_MS // 50):
            if len(self.offsets) >= number:
                return
            self.page.wait_for_timeout(50)
        raise TimeoutError(f"chunk {number} not sent; offsets {self.offsets}")


def test_a_large_file_uploads_resumably_through_pause_and_a_reload(
    page, small_chunk_web, account, tmp_path
):
    records = 10_000
    path = tmp_path / "resumable.json"
    path.write_bytes(metrics_bytes(records))  # about 1.5 MB: six chunks
    chunks = HeldChunks(page, hold={3, 5})
    sign_in(page, small_chunk_web.base_url, account)
    load_id = page.evaluate("window.__loadId")

    page.set_input_files("#upload-input", str(path))
    item = page.locator(".upload-item", has_text="resumable.json")
    chunks.wait_until_held(3)
    # Two chunks are stored, the third hangs: pause, then resume from the server's.
    item.get_by_role("button", name="Pause uploading resumable.json").click()
    expect(item).to_have_attribute("data-state", "paused")
    expect(item.locator("[data-role=upload-message]")).to_contain_text("Paused at")
    screenshot(page, "12-resumable-paused", full_page=False)
    item.get_by_role("button", name="Resume uploading resumable.json").click()
    chunks.wait_until_held(5)
    assert chunks.offsets == [k * RESUMABLE_CHUNK for k in (0, 1, 2, 2, 3)]

    # The fifth chunk hangs: reload. The page lists the unfinished upload with what
    # the server holds (three chunks), and goes on from there once the same file is
    # chosen again.
    page.reload()
    assert page.evaluate("window.__loadId") != load_id
    held = 3 * RESUMABLE_CHUNK
    expect(item).to_have_attribute("data-state", "paused")
    expect(item.locator("[data-role=upload-message]")).to_have_text(
        f"Stopped at {round(100 * held / path.stat().st_size)}%. "
        "Choose this file again to go on from there."
    )
    screenshot(page, "13-resumable-after-reload", full_page=False)
    page.set_input_files("#upload-input", str(path))
    file_row = row(page, "resumable.json")
    expect(file_row.locator("[data-role=status]")).to_have_text("processed")
    expect(file_row.locator("[data-role=records]")).to_have_text(str(records))
    expect(file_row.locator("[data-role=anomalies]")).to_have_text(
        str(expected_anomalies(records))
    )
    expect(item).to_have_count(1)
    screenshot(page, "14-resumable-processed", full_page=False)
    # After the reload the upload went on at the server's offset: no byte was sent
    # twice but the chunks that hung, and the file is the one chosen.
    assert chunks.offsets[5] == held
    assert chunks.offsets == sorted(chunks.offsets)
    assert chunks.offsets.count(0) == 1
    file = File.objects.get(owner=account, name="resumable.json")
    assert file.size == path.stat().st_size
    assert file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    page.unroute_all(behavior="ignoreErrors")


def test_a_paused_upload_can_be_discarded(page, small_chunk_web, account, tmp_path):
    path = tmp_path / "discarded.json"
    path.write_bytes(metrics_bytes(5_000))
    chunks = HeldChunks(page, hold={2})
    sign_in(page, small_chunk_web.base_url, account)
    page.set_input_files("#upload-input", str(path))
    item = page.locator(".upload-item", has_text="discarded.json")
    chunks.wait_until_held(2)
    item.get_by_role("button", name="Pause uploading discarded.json").click()
    item.get_by_role("button", name="Discard the upload of discarded.json").click()
    expect(item).to_have_count(0)
    for _ in range(TIMEOUT_MS // 50):  # the DELETE goes through the page's route
        if not Upload.objects.filter(owner=account).exists():
            break
        page.wait_for_timeout(50)
    assert not Upload.objects.filter(owner=account).exists()
    assert (
        page.evaluate(
            "Object.keys(localStorage).filter((key) => key.startsWith('tus::'))"
        )
        == []
    )
    page.reload()
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator(".upload-item")).to_have_count(0)
    assert not File.objects.filter(owner=account).exists()
    page.unroute_all(behavior="ignoreErrors")


def test_a_lost_answer_to_the_last_chunk_still_shows_the_file(
    page, small_chunk_web, account, tmp_path
):
    records = 3_000
    path = tmp_path / "lost-answer.json"
    path.write_bytes(metrics_bytes(records))  # two chunks
    chunks = len(range(0, path.stat().st_size, RESUMABLE_CHUNK))
    patches = []

    def deliver_then_drop_the_last_answer(route, request) -> None:
        if request.method == "PATCH":
            patches.append(int(request.headers["upload-offset"]))
            if len(patches) == chunks:
                route.fetch()  # the server takes the last chunk and makes the file
                route.abort("connectionreset")  # and its answer never arrives
                return
        route.continue_()

    page.route("**/api/uploads/**", deliver_then_drop_the_last_answer)
    sign_in(page, small_chunk_web.base_url, account)
    page.set_input_files("#upload-input", str(path))
    item = page.locator(".upload-item", has_text="lost-answer.json")
    expect(item).to_have_attribute("data-state", "done")
    file = File.objects.get(owner=account)
    expect(item.get_by_role("link", name="Open lost-answer.json")).to_have_attribute(
        "href", f"/f/{file.pk}/"
    )
    file_row = row(page, "lost-answer.json")
    expect(file_row.locator("[data-role=status]")).to_have_text("processed")
    expect(file_row.locator("[data-role=records]")).to_have_text(str(records))
    # The retry found every byte on the server (HEAD) and sent none again.
    assert len(patches) == chunks
    assert File.objects.filter(owner=account).count() == 1
    expect(page.locator("tr.file-row")).to_have_count(1)
    page.unroute_all(behavior="ignoreErrors")


def test_a_large_replacement_goes_resumably_and_survives_a_reload(
    page, small_chunk_web, account, tmp_path
):
    file = processed_file(account, "first.json")
    records = 8_000
    path = tmp_path / "second.json"
    path.write_bytes(metrics_bytes(records))  # about 1.2 MB: five chunks
    chunks = HeldChunks(page, hold={2})
    sign_in(page, small_chunk_web.base_url, account)
    page.goto(f"{small_chunk_web.base_url}/f/{file.pk}/")
    status = page.locator("#summary [data-role=status]")
    expect(status).to_have_text("processed")

    page.set_input_files("#replace-input", str(path))
    chunks.wait_until_held(2)  # one chunk stored, the second hangs: reload
    page.reload()
    expect(status).to_have_text("processed")  # still the first content
    page.set_input_files("#replace-input", str(path))

    expect(page.locator(".toast", has_text="Replaced")).to_be_visible()
    expect(page.locator("h1[data-role=name]")).to_have_text("second.json")
    expect(status).to_have_text("processed")
    expect(page.locator("#summary [data-role=records]")).to_have_text(str(records))
    # After the reload the upload went on from the server's offset.
    assert chunks.offsets[:3] == [0, RESUMABLE_CHUNK, RESUMABLE_CHUNK]
    assert chunks.offsets == sorted(chunks.offsets)
    replaced = File.objects.get(owner=account)  # the same file, new content
    assert (replaced.pk, replaced.name, replaced.record_count) == (
        file.pk,
        "second.json",
        records,
    )
    assert replaced.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (
        page.evaluate(
            "Object.keys(localStorage).filter((key) => key.startsWith('tus::'))"
        )
        == []
    )
    page.unroute_all(behavior="ignoreErrors")
