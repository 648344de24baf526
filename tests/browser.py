"""A real headless browser for tests: Playwright driving the system's Chromium (Debian's `chromium`).

Playwright never downloads a browser here: it is launched with `executable_path`. Tests that need
it are skipped, with the reason, only when that Chromium is not installed (`make test` installs it
as root with apt). Use from a test module:

    from browser import browser, page, record_requests  # noqa: F401  (pytest fixtures)

    def test_x(page):
        requests = record_requests(page)
        page.goto(url)
        ...
        assert outside_requests(requests) == []

`launch_chromium(playwright)` starts one directly, e.g. for a web-UI test's own fixtures.

Each module that imports the fixtures gets its own copy of them, but they share one Playwright and
one browser per process: Playwright's sync API allows one running instance per thread.
"""
import contextlib
import os

import pytest

CHROMIUM = os.environ.get("WAN_TEST_CHROMIUM", "/usr/bin/chromium")
# Root in a container, no GPU, closed network: no sandbox (Playwright's default too), no /dev/shm reliance,
# none of Chromium's background calls home, and videos may start without a click.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
         "--autoplay-policy=no-user-gesture-required"]
LOCAL_SCHEMES = ("file:", "data:", "blob:")
TIMEOUT_MS = 30_000


def chromium_missing_reason():
    """Why the browser tests cannot run, or None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; WAN_TEST_CHROMIUM picks another)"
    return None


def launch_chromium(playwright):
    """A headless Chromium Browser from the system binary."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)


def record_requests(page):
    """A list that fills with the URL of every request the page makes from now on."""
    urls = []
    page.on("request", lambda request: urls.append(request.url))
    return urls


def outside_requests(urls, allowed=LOCAL_SCHEMES):
    """The URLs that do not start with one of the `allowed` prefixes (schemes or an app's origin)."""
    return [url for url in urls if not url.startswith(tuple(allowed))]


_shared = {"users": 0}


@contextlib.contextmanager
def shared_chromium():
    """The process' one headless Chromium, started on first use and closed when its last user is done."""
    from playwright.sync_api import sync_playwright

    if not _shared["users"]:
        _shared["playwright"] = sync_playwright().start()
        _shared["browser"] = launch_chromium(_shared["playwright"])
    _shared["users"] += 1
    try:
        yield _shared["browser"]
    finally:
        _shared["users"] -= 1
        if not _shared["users"]:
            _shared.pop("browser").close()
            _shared.pop("playwright").stop()


@pytest.fixture(scope="session")
def browser():
    reason = chromium_missing_reason()
    if reason:
        pytest.skip(reason)
    with shared_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser):
    """A fresh page (own context: no shared cache or storage between tests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()
