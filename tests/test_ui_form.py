"""Browser test: headless Chromium (Debian's ``chromium``) logs into the Airflow UI of a real local
deployment and screenshots the DAG's trigger form with its typed Params.

Driven over the Chrome DevTools Protocol (``websockets``, already an Airflow dependency), so no
browser-automation package is needed. The screenshot lands in ``var/screenshots/trigger_form.png``.
Skipped only when no Chromium binary exists (CI installs Debian's ``chromium`` in ``.ci/run``).
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import httpx

from tools.local_airflow import DAG_ID, PROJECT_DIR, LocalAirflow, free_port

pytestmark = pytest.mark.timeout(600)
SCREENSHOT = PROJECT_DIR / "var" / "screenshots" / "trigger_form.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1800", "--hide-scrollbars",
                  # keep the footprint small (one renderer, no site isolation, no extensions)
                  "--renderer-process-limit=1", "--disable-features=site-per-process,Translate,MediaRouter",
                  "--disable-extensions", "--in-process-gpu", "--js-flags=--max-old-space-size=256"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class Page:
    """The few DevTools Protocol calls this test needs, on one page target."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=30).__enter__()
        self.ids = itertools.count(1)

    def call(self, method: str, timeout: float = 60, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
        raise TimeoutError(method)

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        body = self.js("document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise TimeoutError(f"waited {timeout}s for {what or expression}; page shows:\n{body}")

    def click(self, element_js: str):
        """A real mouse click (press + release) in the middle of the element (``element_js``: a JS expression)."""
        box = self.js(f"(() => {{ const e = {element_js}; e.scrollIntoView({{block: 'center'}});"
                      f" const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def goto(self, url: str):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", what=f"load of {url}")

    def close(self):
        self.ws.close()


#: the trigger dialog (the page may hold other, hidden [role=dialog] elements)
DIALOG = "([...document.querySelectorAll('[role=dialog]')].find(d => d.innerText.includes('Trigger Dag')) || document.body)"

SET_VALUE = """(sel, value) => {
  const el = document.querySelector(sel);
  if (!el) return false;
  const setter = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set;
  setter.call(el, value);
  el.dispatchEvent(new Event('input', {bubbles: true}));
  el.dispatchEvent(new Event('change', {bubbles: true}));
  return true;
}"""


def _signal_group(pgid: int, sig: int) -> None:
    if pgid > 1:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


SECTIONS = ("What to run", "Output", "Training data", "Quality gate", "Model")
#: how many inputs of each type a form region holds (ROOT = a JS expression for the region)
TYPED_INPUTS = """(() => { const d = ROOT; return {
    numbers: d.querySelectorAll('input[type=number], input[inputmode=decimal], input[inputmode=numeric]').length,
    switches: d.querySelectorAll('input[type=checkbox], [role=switch], [role=checkbox]').length,
    dates: d.querySelectorAll('input[type=date]').length,
    choices: d.querySelectorAll('select, [role=combobox], [data-scope=select], [data-scope=combobox]').length}; })()"""


#: viewport rectangles (CSS px = image px at scale 1) of the dialog, a section's trigger and its content
RECTS = """(() => { const r = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
    return {dialog: r(DIALOG), trigger: r(TRIGGER), content: r(CONTENT)}; })()"""


def _compose(parts, out: Path) -> None:
    """One image: the dialog down to the first section, then each section (title + opened content)."""
    from PIL import Image

    crops = []
    for index, (path, rects) in enumerate(parts):
        image = Image.open(path)
        left, top, right, _ = (round(v) for v in rects["dialog"])
        if index == 0:
            crops.append(image.crop((left, max(0, top), right, round(rects["trigger"][1]))))
        crops.append(image.crop((left, max(0, round(rects["trigger"][1])), right,
                                 min(image.height, round(rects["content"][3])))))
    width = max(c.width for c in crops)
    sheet = Image.new("RGB", (width, sum(c.height for c in crops)), "white")
    y = 0
    for crop in crops:
        sheet.paste(crop, (0, y))
        y += crop.height
    sheet.save(out)
    assert out.stat().st_size > 20_000


def _screenshot(page: "Page", path: Path) -> None:
    shot = page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000, path


@pytest.fixture(scope="module")
def chromium():
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary (install Debian's chromium: apt-get install chromium; .ci/run does)")
    return binary


def test_login_and_trigger_form_screenshot(tmp_path, chromium):
    # the form needs the api-server and the parsed DAG, not the scheduler/triggerer (no run is made)
    af = LocalAirflow(tmp_path / "airflow-ui", tmp_path / "data", parallelism=1,
                      components=("api-server", "dag-processor"))
    browser = None
    try:
        af.start()
        af.wait_for_dag()
        # no anonymous access: the API refuses, the UI sends the browser to the login page
        assert httpx.get(f"{af.url}/api/v2/dags", timeout=30).status_code == 401

        port = free_port()
        profile = tmp_path / "chromium-profile"
        profile.mkdir()
        browser = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "chromium.log").open("wb"), start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                page_target = next(t for t in targets if t["type"] == "page")
                break
            except (httpx.TransportError, ValueError, StopIteration):
                if time.monotonic() > deadline or browser.poll() is not None:
                    raise RuntimeError((tmp_path / "chromium.log").read_text(errors="replace")[-3000:])
                time.sleep(0.5)
        page = Page(page_target["webSocketDebuggerUrl"])
        page.call("Page.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=1800, deviceScaleFactor=1, mobile=False)

        # -- log in through the UI's login form ----------------------------------------------------------------
        page.goto(f"{af.url}/dags/{DAG_ID}")
        page.wait_for("!!document.querySelector('input[type=password]')", what="the login form")
        assert "/login" in page.js("location.href"), page.js("location.href")
        user_selector = "input[name=username], input[autocomplete=username], input[type=text]"
        assert page.js(f"({SET_VALUE})({json.dumps(user_selector)}, {json.dumps(af.user)})")
        assert page.js(f"({SET_VALUE})('input[type=password]', {json.dumps(af.password)})")
        page.js("document.querySelector('button[type=submit]').click()")
        page.wait_for("!location.href.includes('/login')", what="the redirect after login")
        page.goto(f"{af.url}/dags/{DAG_ID}")

        # -- open the trigger form ---------------------------------------------------------------------------
        page.wait_for("[...document.querySelectorAll('button')].some(b => /trigger/i.test(b.innerText || b.ariaLabel))",
                      what="the Trigger button", timeout=90)
        page.click("[...document.querySelectorAll('button')].find(b => /trigger/i.test(b.innerText || b.ariaLabel))")
        page.wait_for("document.body.innerText.includes('Trigger Dag')", what="the trigger dialog")
        # the Params come in accordion sections (the DAG's `section`s), collapsed by default: open each
        # one, check its typed inputs, screenshot it; the main screenshot shows every section opened
        page.wait_for(f"({DIALOG}).innerText.includes('What to run')", what="the Params form's sections", timeout=60)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        texts, inputs, parts = [], {}, []
        for section in SECTIONS:
            trigger = f"({DIALOG}).querySelector('button[id$=\"trigger:{section}\"]')"
            assert page.js(f"!!{trigger}"), f"no section {section!r} in the form"
            if page.js(f"{trigger}.getAttribute('aria-expanded')") != "true":
                page.click(trigger)
            page.wait_for(f"{trigger}.getAttribute('aria-expanded') === 'true'", what=f"section {section} to open")
            time.sleep(1)
            content = f"({DIALOG}).querySelector('[id$=\"content:{section}\"]')"
            texts.append(page.js(f"{content}.innerText"))
            inputs[section] = page.js(TYPED_INPUTS.replace("ROOT", content))
            shot = SCREENSHOT.with_name(f"trigger_form_{section.lower().replace(' ', '_')}.png")
            _screenshot(page, shot)
            parts.append((shot, page.js(RECTS.replace("TRIGGER", trigger).replace("CONTENT", content)
                                        .replace("DIALOG", DIALOG))))
        form_text = "\n".join(texts)
        # with its defaults the form is valid: no field flagged, the Trigger button enabled
        submit = page.js(f"""(() => {{ const b = [...({DIALOG}).querySelectorAll('button')]
            .filter(x => x.innerText.trim() === 'Trigger'); return b.length ? b.every(x => !x.disabled) : null; }})()""")
        assert submit is True, f"the trigger form cannot be submitted with its defaults (Trigger button: {submit})"
        for expected in ("Date to process", "top n", "Items per user in the published lists", "train window days",
                         "allow older", "publish", "model", "factors", "min lift over popularity"):
            assert expected in form_text, f"{expected!r} missing from the trigger form:\n{form_text[:3000]}"
        totals = {kind: sum(found[kind] for found in inputs.values()) for kind in ("numbers", "switches", "dates", "choices")}
        assert totals["numbers"] >= 8 and totals["switches"] >= 2 and totals["dates"] == 1 and totals["choices"] >= 1, inputs

        # the accordion opens one section at a time: compose the dialog's header and every opened section
        _compose(parts, SCREENSHOT)
        SCREENSHOT.with_suffix(".txt").write_text(
            f"{SCREENSHOT.name}: the dialog header, then each section of the form as it looks when opened "
            f"({', '.join(SECTIONS)}; one open at a time, composed from the per-section screenshots)\n"
            f"inputs per section: {json.dumps(inputs)}\n\n{form_text}\n")
        print(f"\ntrigger form screenshot: {SCREENSHOT} (inputs: {totals})")
        page.close()
    finally:
        if browser is not None:  # its own session: signal exactly that process group
            _signal_group(browser.pid, signal.SIGTERM)
            try:
                browser.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(browser.pid, signal.SIGKILL)  # renderer/zygote children left in the group
            try:
                browser.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        af.stop()
    assert af.leftovers() == []
