"""The built site in a real browser: headless Chromium, driven through its DevTools protocol.

The site is built from this checkout, served over http on 127.0.0.1 and opened from disk
(``file://.../index.html``, as README.md says). Each page must render with its title and log no
console error or failed request; from disk, its links must lead to the pages, not to directory
listings; the search box must find ``ridge_blend`` either way. A screenshot of each page is kept
in the test's tmp_path. Without Chromium the tests skip, except in CI (``CI`` set), where a
missing browser fails them.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_docs import build_site

try:
    import websocket  # websocket-client, in the dev extra
except ImportError:  # pragma: no cover - the tests below skip or fail
    websocket = None

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT = 30.0


def missing(message: str) -> None:
    """A missing browser or client skips the tests here, and fails them in CI."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def chromium_binary() -> str:
    if websocket is None:
        missing("no websocket-client (pip install -e '.[dev]')")
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    missing("no Chromium found (apt-get install chromium)")
    raise AssertionError  # not reached


class DevTools:
    """One page target over the DevTools websocket: commands, and the events they raise."""

    def __init__(self, ws_url: str) -> None:
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for event in self.events[seen:]:
                if event["method"] == method:
                    self.events.remove(event)
                    return event
            seen = len(self.events)
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                message = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{expression} stayed false for {timeout} s")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads logged so far."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] == "error":
                args = params["args"]
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in args))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"{entry.get('text')} {entry.get('url', '')}")
        return found

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], DevTools]]:
    """Starts headless Chromium; the fixture's value opens a fresh page target."""
    binary = chromium_binary()
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",  # as root, as in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + TIMEOUT
    while not (port_file.is_file() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{binary} did not open its DevTools port")
        time.sleep(0.05)
    endpoint = f"http://127.0.0.1:{port_file.read_text().split()[0]}"
    opened: list[DevTools] = []

    def new_page() -> DevTools:
        request = urllib.request.Request(f"{endpoint}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            target = json.load(response)
        page = DevTools(target["webSocketDebuggerUrl"])
        opened.append(page)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )
        return page

    yield new_page
    for page in opened:
        page.close()
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def open_page(page: DevTools, url: str) -> None:
    page.send("Page.navigate", url=url)
    page.wait_event("Page.loadEventFired")
    page.wait_for("document.readyState === 'complete'")


def screenshot(page: DevTools, path: Path) -> None:
    shot = page.send("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("path", "title", "heading", "text"),
    [
        ("", "covidreg", "covidreg", "Honest validation by default"),
        ("commands/train.html", "train - covidreg", "covidreg train", "valid_rmse="),
        ("api.html", "Python API - covidreg", "Python API", "CovidRegressor"),
    ],
)
def test_a_page_renders(
    site_url: str,
    browser: Callable[[], DevTools],
    tmp_path: Path,
    path: str,
    title: str,
    heading: str,
    text: str,
) -> None:
    page = browser()
    open_page(page, site_url + path)
    assert page.evaluate("document.title") == title
    assert page.evaluate("document.querySelector('article h1').textContent.trim()").startswith(
        heading
    )
    assert text in page.evaluate("document.querySelector('article').innerText")
    # the theme's script ran: it turns the header's search into a live component
    page.wait_for("!!document.querySelector('.md-search__input')")
    name = path.removesuffix(".html").replace("/", "-") or "index"
    screenshot(page, tmp_path / f"{name}.png")
    assert page.errors() == [], f"{path or 'home'} logged errors (screenshot {tmp_path})"


@pytest.mark.parametrize("opened", ["served", "from disk"])
def test_search_finds_ridge_blend(
    opened: str, site: Path, site_url: str, browser: Callable[[], DevTools], tmp_path: Path
) -> None:
    with urllib.request.urlopen(site_url + "search/search_index.json", timeout=TIMEOUT) as f:
        index = json.load(f)
    assert any("ridge_blend" in doc["text"] for doc in index["docs"])

    page = browser()
    # from disk, the theme reads the index from search/search_index.js (the offline plugin's)
    open_page(page, site_url if opened == "served" else (site / "index.html").as_uri())
    page.evaluate("document.querySelector('.md-search__input').focus()")
    for char in "ridge_blend":
        page.send("Input.dispatchKeyEvent", type="keyDown", text=char, key=char)
        page.send("Input.dispatchKeyEvent", type="keyUp", key=char)
    count = page.wait_for(
        "document.querySelectorAll('.md-search-result__item').length", timeout=TIMEOUT
    )
    assert count > 0
    results = page.evaluate("document.querySelector('.md-search-result').innerText")
    assert "ridge_blend" in results
    assert page.evaluate("document.querySelector('.md-search-result__meta').innerText")
    screenshot(page, tmp_path / "search.png")
    assert page.errors() == [], f"the search logged errors (screenshot {tmp_path})"


def follow(page: DevTools, selector: str) -> None:
    """Click the link ``selector`` finds and wait for the page it opens."""
    href = page.evaluate(f"document.querySelector({json.dumps(selector)}).href")
    page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
    page.wait_event("Page.loadEventFired")
    page.wait_for("document.readyState === 'complete'")
    assert page.evaluate("location.href") == href


def shows(page: DevTools, title: str, heading: str) -> None:
    """The page is ``title``'s, not a directory listing of its folder."""
    assert page.evaluate("document.title") == title
    assert page.evaluate("document.querySelector('article h1').textContent.trim()").startswith(
        heading
    )
    assert "Index of" not in page.evaluate("document.body.innerText")


def test_the_site_works_opened_from_disk(
    site: Path, browser: Callable[[], DevTools], tmp_path: Path
) -> None:
    page = browser()
    open_page(page, (site / "index.html").as_uri())
    shows(page, "covidreg", "covidreg")
    # a link of the home page's text, then the navigation from a page in a folder
    follow(page, 'article a[href="getting-started.html"]')
    shows(page, "Getting started - covidreg", "Getting started")
    assert page.evaluate("location.protocol") == "file:"
    # the per-edition tabs: the first 2023 one shows that year's commands once chosen
    shown = "document.querySelector('article').innerText"
    assert "covidreg fetch --edition 2023 --from" not in page.evaluate(shown)
    page.evaluate(
        "[...document.querySelectorAll('.tabbed-labels label')]"
        ".find(label => label.textContent.trim() === '2023').click()"
    )
    assert "covidreg fetch --edition 2023 --from" in page.evaluate(shown)
    screenshot(page, tmp_path / "getting-started.png")
    follow(page, 'nav a[href="commands/train.html"]')
    shows(page, "train - covidreg", "covidreg train")
    follow(page, 'nav a[href="../results.html"]')
    shows(page, "Results - covidreg", "Results")
    follow(page, 'nav a[href="commands/train.html"]')
    images = page.evaluate(
        "[...document.querySelectorAll('article img')].map(i => [i.src, i.naturalWidth])"
    )
    assert images and all(width > 0 for _, width in images), images
    assert page.errors() == [], f"the site opened from disk logged errors (screenshot {tmp_path})"
