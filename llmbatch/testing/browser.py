"""A real browser for the tests of pages llmbatch writes (`report --html`): Debian's
``chromium``, headless, driven through the DevTools protocol over a websocket
(aiohttp's client; no selenium, no driver binary). `look` opens a file with the network
blocked and says what a user would have met: the console's errors, every request the
page tried beyond its own file, the size and contents of its charts, and a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["BROWSERS", "Look", "find_browser", "look"]

# Debian's package names its binary chromium; other systems' names come after it.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT = 30.0
LOAD_TIMEOUT = 60.0

# What the page holds once its scripts ran: its sections, and per chart its size and
# how many things plotly drew in it (traces, bars' and lines' paths).
_INSPECT = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    sections: [...document.querySelectorAll('[data-section]')].map(e => e.dataset.section),
    charts: [...document.querySelectorAll('[data-chart]')].map(e => ({
      name: e.dataset.chart, size: box(e),
      svgs: e.querySelectorAll('svg.main-svg').length,
      marks: e.querySelectorAll('g.trace path, g.trace rect, g.points path').length,
      plot: e.querySelector('.plot-container') ? box(e.querySelector('.plot-container')) : [0, 0],
    })),
    scripts: document.querySelectorAll('script').length,
    counts: Object.fromEntries([...document.querySelectorAll('[data-count]')]
      .map(e => [e.dataset.count, e.textContent])),
    text: document.body.innerText,
    height: document.documentElement.scrollHeight,
  };
})()"""

# The distinct colours among pixels sampled from a PNG (a screenshot), counted by the
# browser itself (a data: image drawn on a canvas).
_COLOURS = """new Promise((resolve, reject) => {
  const img = new Image();
  img.onload = () => {
    const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 97) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    resolve(seen.size);
  };
  img.onerror = () => reject(new Error('screenshot did not decode'));
  img.src = 'data:image/png;base64,PNG';
})"""


@dataclass(slots=True)
class Look:
    """What the browser saw of a page."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, CSP refusals
    requests: list[str] = field(default_factory=list)  # every URL fetched but the page's own
    sections: list[str] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    scripts: int = 0  # <script> elements in the page once it ran
    counts: dict[str, str] = field(default_factory=dict)  # the page's [data-count] texts
    text: str = ""  # what a user reads (innerText)
    screenshot: bytes = b""  # PNG of the whole page
    colours: int = 0  # distinct colours sampled from the screenshot
    value: Any = None  # what `evaluate` returned


def find_browser() -> str | None:
    """The browser binary, if there is one (``LLMBATCH_CHROMIUM`` names another)."""
    named = os.environ.get("LLMBATCH_CHROMIUM")
    if named:
        return shutil.which(named)
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


class _DevTools:
    """One websocket to a page target: calls by id, events kept in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = msg.json()
            future = self._waiting.pop(data["id"], None) if "id" in data else None
            if future is not None and not future.done():
                future.set_result(data)
            elif "method" in data:
                self.events.append(data)
                self._arrived.set()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        reply = await asyncio.wait_for(future, LOAD_TIMEOUT)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def event(self, method: str) -> dict[str, Any]:
        """The first event of `method` (waiting for it)."""
        while True:
            for event in self.events:
                if event["method"] == method:
                    return event
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), LOAD_TIMEOUT)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


@contextlib.asynccontextmanager
async def _chromium(binary: str, width: int, height: int) -> AsyncIterator[str]:
    """A headless browser of its own profile; yields its DevTools port's base URL."""
    # Chromium's helper processes may still write to the profile as it is removed.
    with tempfile.TemporaryDirectory(prefix="llmbatch-chromium-", ignore_cleanup_errors=True) as profile:
        argv = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
            "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank",
        ]  # fmt: skip
        quiet = subprocess.DEVNULL
        # A session of its own: its helper processes (renderer, crash handler) end with it.
        proc = subprocess.Popen(argv, stdin=quiet, stdout=quiet, stderr=quiet, start_new_session=True)
        try:
            active = Path(profile) / "DevToolsActivePort"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT
            while not (active.is_file() and active.read_text().count("\n") >= 1):
                if proc.poll() is not None or loop.time() > deadline:
                    raise RuntimeError(f"{binary} did not start (exit {proc.poll()})")
                await asyncio.sleep(0.05)
            yield f"http://127.0.0.1:{active.read_text().split()[0]}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # any helper left behind


def _errors(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append(str(params["entry"].get("text")))
    return found


async def look(
    page: Path,
    *,
    width: int = 1280,
    height: int = 900,
    evaluate: str | None = None,
    binary: str | None = None,
) -> Look:
    """Open `page` (a file) in headless chromium with the network blocked; wait for its
    scripts and two frames; say what was seen (see `Look`)."""
    binary = binary or find_browser()
    if binary is None:
        raise RuntimeError("no browser: install Debian's chromium")
    url = page.resolve().as_uri()
    async with _chromium(binary, width, height) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/json/list") as resp:
            targets = await resp.json()
        target = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = _DevTools(ws)
            try:
                return await _look(tools, url, evaluate)
            finally:
                await tools.close()


async def _look(tools: _DevTools, url: str, evaluate: str | None) -> Look:
    for domain in ("Page", "Runtime", "Log", "Network"):
        await tools.call(f"{domain}.enable")
    await tools.call("Network.emulateNetworkConditions", offline=True, latency=0,
                     downloadThroughput=-1, uploadThroughput=-1)  # fmt: skip
    await tools.call("Network.setBlockedURLs", urls=["http://*", "https://*", "ws://*", "wss://*", "ftp://*"])
    await tools.call("Page.navigate", url=url)
    await tools.event("Page.loadEventFired")
    await tools.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    seen: dict[str, Any] = await tools.evaluate(_INSPECT)
    value = await tools.evaluate(evaluate) if evaluate is not None else None
    metrics = await tools.call("Page.getLayoutMetrics")
    size = metrics["cssContentSize"]
    shot = await tools.call(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    )
    colours = await tools.evaluate(_COLOURS.replace("PNG", shot["data"]))
    requests = [
        e["params"]["request"]["url"]
        for e in tools.events
        if e["method"] == "Network.requestWillBeSent"
        and e["params"]["request"]["url"] != url
        and not e["params"]["request"]["url"].startswith(("data:", "blob:"))
    ]
    return Look(
        errors=_errors(tools.events),
        requests=requests,
        sections=seen["sections"],
        charts=seen["charts"],
        scripts=seen["scripts"],
        counts=seen["counts"],
        text=seen["text"],
        screenshot=base64.b64decode(shot["data"]),
        colours=int(colours),
        value=value,
    )
