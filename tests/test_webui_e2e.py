"""The web UI end to end: a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) on a real
``lightpipe serve`` (uvicorn on a free port, a SQLite file, job processes, a simulated EIGER stream).

Every test fails on a console error in the browser, except the browser's own line for an HTTP status the test
provokes on purpose (a refused token, a refused parameter). Each page is saved as a screenshot in the pytest tmp
folder (``ui_shots``), and also under ``$LIGHTPIPE_UI_SHOTS`` when that is set.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest

from lightpipe.service.demo import DemoStream
from lightpipe.service.settings import ServiceSettings
from lightpipe.service.webui import WEB_DIR
from service_harness import POWDER, RunningService, make_data

playwright_api = pytest.importorskip("playwright.sync_api", reason="the web UI tests need playwright (test extra)")
CHROMIUM = Path(os.environ.get("LIGHTPIPE_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LIGHTPIPE_CHROMIUM)",
                allow_module_level=True)
if not (WEB_DIR / "index.html").is_file():
    pytest.skip("the web UI bundle is not built (npm ci && npm run build in web/)", allow_module_level=True)

Page = Any  # playwright.sync_api.Page
VIEWPORT = {"width": 1280, "height": 800}
LIVE_TEMPLATE = (files("lightpipe.service") / "demo-live.yaml").read_text()
#: The line Chromium logs for a resource answered with an error status.
STATUS_LINE = "Failed to load resource: the server responded with a status of {}"


class Shots:
    """Screenshots of the pages, named by the test's step."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.extra = Path(os.environ["LIGHTPIPE_UI_SHOTS"]) if os.environ.get("LIGHTPIPE_UI_SHOTS") else None

    def take(self, page: Page, name: str) -> Path:
        path = self.folder / f"{name}.png"
        # written here, not by Playwright: its event loop would write from an executor thread that outlives the test
        path.write_bytes(page.screenshot(full_page=True))
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.extra / path.name)
        return path


@pytest.fixture(scope="module")
def stream() -> Iterator[DemoStream]:
    with DemoStream(rate_hz=10.0, frames=200) as running:
        yield running


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_data(root)
    (root / "visit1" / "notes.h5").write_bytes(b"this is not an HDF5 file")
    return root


@pytest.fixture()
def service(tmp_path: Path, data_root: Path, stream: DemoStream) -> Iterator[RunningService]:
    """A service of each test's own (its request threads end with it), on the module's data and stream."""
    settings = ServiceSettings(state_dir=tmp_path / "state", data_root=data_root, live_streams=[stream.url])
    running = RunningService(settings)
    try:
        with running.client(running.admin) as c:
            for text in (POWDER, LIVE_TEMPLATE):
                assert c.post("/pipelines", json={"yaml": text}).status_code == 201
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Shots:
    return Shots(tmp_path_factory.mktemp("ui_shots"))


class Console:
    """The browser's console errors and uncaught exceptions; ``allow`` lists what a test provokes on purpose."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allow: list[str] = []

    def check(self) -> None:
        unexpected = [e for e in self.errors if not any(a in e for a in self.allow)]
        assert not unexpected, f"console errors in the browser: {unexpected}"


@pytest.fixture()
def console() -> Console:
    return Console()


@pytest.fixture()
def page(browser: Any, service: RunningService, console: Console) -> Iterator[Page]:
    context = browser.new_context(viewport=VIEWPORT, base_url=service.url)
    tab = context.new_page()
    tab.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: console.errors.append(f"uncaught: {e}"))
    tab.on("dialog", lambda d: d.accept())
    tab.set_default_timeout(20_000)
    try:
        yield tab
        console.check()
    finally:
        context.close()


def log_in(page: Page, token: str, path: str = "/jobs") -> None:
    page.goto(path)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("button", name="Log out").wait_for()


def submit_powder(service: RunningService, dataset: str = "visit1/scan_master.h5") -> dict[str, Any]:
    with service.client(service.admin) as c:
        r = c.post("/jobs", json={"pipeline": "powder-profile", "dataset": dataset})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture()
def finished_job(service: RunningService) -> dict[str, Any]:
    job = submit_powder(service)
    finished = service.wait(service.admin, job["id"], timeout_s=120)
    assert finished["state"] == "completed", finished
    return finished


# -- tests ----------------------------------------------------------------------------------------------------------

def test_a_wrong_token_is_refused_and_a_right_one_logs_in(page: Page, service: RunningService, console: Console,
                                                         shots: Shots) -> None:
    console.allow.append(STATUS_LINE.format(401))
    page.goto("/jobs")
    page.get_by_label("Token").fill("lp_not-a-token")
    page.get_by_role("button", name="Log in").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "This token was refused" in alert.inner_text()
    shots.take(page, "login-refused")
    page.get_by_label("Token").fill(service.admin)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("heading", name="Jobs").wait_for()
    # the token lives in this tab's sessionStorage, never in the URL
    assert page.evaluate("sessionStorage.getItem('lightpipe.token')") == service.admin
    assert service.admin not in page.url
    shots.take(page, "jobs")


def test_an_expired_token_sends_back_to_the_login_page_saying_why(page: Page, service: RunningService,
                                                                  console: Console, shots: Shots) -> None:
    console.allow.append(STATUS_LINE.format(401))
    token = service.token("erin", days=2 / 86400)  # two seconds
    log_in(page, token)
    # the jobs list refreshes every two seconds: its first refusal logs out
    page.get_by_text("Your token was refused").wait_for(timeout=10_000)
    assert "expired" in page.get_by_role("status").inner_text()
    assert page.get_by_label("Token").is_visible()
    shots.take(page, "login-expired")


def test_a_bad_parameter_is_refused_at_its_field_and_a_good_job_runs_to_the_viewer(
        page: Page, service: RunningService, console: Console, shots: Shots) -> None:
    console.allow.append(STATUS_LINE.format(422))
    log_in(page, service.token("alice"), "/pipelines")
    page.get_by_role("link", name="powder-profile").click()
    page.get_by_role("heading", name="powder-profile").wait_for()
    # the form is made from the schema: units, bounds, description and the template's value
    with service.client(service.admin) as c:
        schema = c.get("/pipelines/powder-profile").json()["params_schema"]
    bins = page.locator("#param-profile\\.bins")
    assert bins.input_value() == str(schema["properties"]["profile"]["properties"]["bins"]["default"])
    help_text = page.locator("#param-profile\\.bins-help").inner_text()
    assert "radial bins" in help_text and "≥ 1" in help_text
    assert "[counts]" in page.locator("label[for='param-photons\\.threshold']").inner_text()
    # the dataset from the picker, keyboard only
    page.get_by_role("button", name="Browse…").click()
    page.get_by_role("button", name="📁 visit1").focus()
    page.keyboard.press("Enter")
    page.get_by_role("button", name="scan_master.h5").focus()
    page.keyboard.press("Enter")
    assert page.get_by_label("Dataset", exact=True).input_value() == "visit1/scan_master.h5"
    bins.fill("0")
    page.get_by_role("button", name="Submit job").click()
    error = page.locator("#param-profile\\.bins-error")
    error.wait_for()
    assert "greater than or equal to 1" in error.inner_text()  # the server's own sentence, at the field
    assert bins.get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "param-profile.bins"
    shots.take(page, "form-refused")
    bins.fill("120")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{12}$"))
    job_id = page.url.rsplit("/", 1)[1]
    shots.take(page, "job-running")
    page.locator(".page-head .badge", has_text="completed").wait_for(timeout=90_000)
    with service.client(service.admin) as c:
        assert c.get(f"/jobs/{job_id}").json()["overrides"] == {"profile.bins": 120}
    shots.take(page, "job-finished")
    page.get_by_role("tab", name="Results").click()
    page.get_by_role("link", name="Open in viewer").first.click()
    page.wait_for_url(re.compile(r"/view\?file=job"))
    # h5web follows the NeXus default: the result's default plot is drawn (a canvas and its axes)
    viewer = page.get_by_test_id("h5web")
    viewer.locator("canvas").first.wait_for(timeout=30_000)
    viewer.locator("svg").first.wait_for()
    time.sleep(1.0)  # the plot's first paint
    shots.take(page, "viewer-result")


def test_a_raw_file_opens_in_the_viewer_and_a_broken_one_says_why(page: Page, service: RunningService,
                                                                  console: Console, shots: Shots) -> None:
    console.allow.append(STATUS_LINE.format(422))  # notes.h5 is no HDF5 file
    console.allow.append(STATUS_LINE.format(400))
    log_in(page, service.admin, "/data")
    page.get_by_role("link", name="📁 visit1").click()
    row = page.get_by_role("row", name=re.compile("scan_master.h5"))
    assert "DECTRIS master" in row.inner_text()
    shots.take(page, "datasets")
    row.get_by_role("link", name="View").click()
    page.get_by_test_id("h5web").wait_for()
    # a raw file names no default plot: its first block of frames is shown, as images
    page.get_by_test_id("h5web").get_by_role("treeitem", name="entry").wait_for()
    page.get_by_test_id("h5web").locator("canvas").first.wait_for()
    page.get_by_test_id("h5web").get_by_text("Loading").first.wait_for(state="hidden")
    shots.take(page, "viewer-raw")
    page.goto("/view?file=visit1/notes.h5")
    page.get_by_text("This file cannot be opened").wait_for()
    shots.take(page, "viewer-broken")


def test_the_weather_plot_and_log_of_a_finished_job(page: Page, service: RunningService,
                                                    finished_job: dict[str, Any], shots: Shots) -> None:
    log_in(page, service.admin, f"/jobs/{finished_job['id']}?tab=weather")
    plot = page.get_by_test_id("weather-plot")
    plot.wait_for()
    with service.client(service.admin) as c:
        chunks = c.get(f"/jobs/{finished_job['id']}/chunks").json()["items"]
    assert chunks
    assert plot.locator("g.chunk, rect.chunk").count() == len(chunks)  # one mark per chunk
    assert page.get_by_text(f"{len(chunks)} chunks on").is_visible()
    shots.take(page, "weather")
    page.get_by_role("tab", name="Log").click()
    page.get_by_role("log").get_by_text("submitted powder-profile").wait_for()
    shots.take(page, "log")


def test_the_live_image_changes_while_a_stream_runs_and_the_job_stops(
        page: Page, service: RunningService, stream: DemoStream, shots: Shots) -> None:
    log_in(page, service.admin, "/live")
    page.get_by_label("Pipeline").select_option("demo-live")
    assert page.get_by_label("Detector stream", exact=True).input_value() == stream.url
    page.get_by_role("button", name="Start live job").click()
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f]{12}$"))
    job_id = page.url.rsplit("/", 1)[1]
    canvas = page.get_by_test_id("live-canvas")
    page.wait_for_function("Number(document.querySelector('[data-testid=live-canvas]')?.dataset.shown || 0) >= 2",
                           timeout=60_000)
    first = (canvas.get_attribute("data-seq"), canvas.evaluate("c => c.toDataURL()"))
    page.wait_for_function(f"document.querySelector('[data-testid=live-canvas]').dataset.seq !== '{first[0]}'",
                           timeout=30_000)
    time.sleep(1.0)
    second = (canvas.get_attribute("data-seq"), canvas.evaluate("c => c.toDataURL()"))
    assert second[0] != first[0] and second[1] != first[1], "the live image did not change"
    assert page.locator(".plot", has_text="spot.x_px").locator("polyline").count() == 1
    shots.take(page, "job-live")
    page.get_by_role("link", name="Topology").click()
    section = page.get_by_role("region", name=f"Job {job_id}")
    section.get_by_role("cell", name="receiver").first.wait_for(timeout=20_000)
    shots.take(page, "topology")
    page.get_by_role("link", name="Live streams").click()
    page.get_by_role("row", name=re.compile(job_id)).get_by_role("button", name="Stop").click()
    with service.client(service.admin) as c:
        deadline = time.monotonic() + 60
        while c.get(f"/jobs/{job_id}").json()["state"] != "cancelled":
            assert time.monotonic() < deadline, "the live job did not stop"
            time.sleep(0.3)
    shots.take(page, "live-streams")


def test_admin_sees_validation_problems_at_their_lines_and_makes_a_token(
        page: Page, service: RunningService, console: Console, shots: Shots) -> None:
    console.allow.append(STATUS_LINE.format(422))
    log_in(page, service.admin, "/admin")
    bad = POWDER.replace("use: threshold", "use: threshhold")
    line = bad.splitlines().index(next(x for x in bad.splitlines() if "threshhold" in x)) + 1
    page.get_by_label("Pipeline YAML").fill(bad)
    page.get_by_role("button", name="Validate and register").click()
    marked = page.locator(f"li.problem-line[data-line='{line}']")
    marked.wait_for()
    assert "threshhold" in marked.inner_text() and "threshold" in marked.locator(".problem").inner_text()
    shots.take(page, "admin-invalid")
    page.get_by_label("User", exact=True).fill("bob")
    page.get_by_label("Folders").fill("visit2")
    page.get_by_role("button", name="Make token").click()
    secret = page.locator("code.secret").inner_text()
    with httpx.Client(base_url=f"{service.url}/api/v1", headers={"Authorization": f"Bearer {secret}"}) as c:
        assert c.get("/me").json() == {**c.get("/me").json(), "user": "bob", "folders": ["visit2"]}
    page.get_by_role("button", name="Versions").first.click()
    page.get_by_role("button", name="v1").click()
    page.locator(".versions pre").wait_for()
    shots.take(page, "admin")


def test_a_service_that_went_away_is_said_on_the_page(browser: Any, tmp_path: Path, console: Console,
                                                      shots: Shots) -> None:
    root = tmp_path / "data"
    root.mkdir()
    gone = RunningService(ServiceSettings(state_dir=tmp_path / "state", data_root=root))
    context = browser.new_context(viewport=VIEWPORT, base_url=gone.url)
    try:
        tab = context.new_page()
        tab.on("console", lambda m: console.errors.append(m.text) if m.type == "error" else None)
        log_in(tab, gone.admin)
        gone.close()
        console.allow.append("net::ERR_CONNECTION_REFUSED")
        tab.get_by_role("link", name="Datasets").click()
        banner = tab.locator(".banner")
        banner.wait_for()
        assert "The service does not answer" in banner.inner_text()
        shots.take(tab, "server-gone")
        console.check()
    finally:
        context.close()
        gone.close()
