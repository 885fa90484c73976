"""Open a report.html in headless Chromium, wait for the 3-D viewer, collect console errors, take a screenshot.

    python tools/browser_check.py outbox/<job>/report.html shot.png

Talks the DevTools protocol over --remote-debugging-pipe (standard library only); WebGL runs on SwiftShader, so
no GPU is needed. Prints JSON: {ok, loaded, errors, console, webgl, seconds, nonblank}.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import pathlib
import queue
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
from PIL import Image


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chrome:
    """A headless browser driven through a CDP pipe (fd 3: commands in, fd 4: replies and events out)."""

    def __init__(self, exe: str, width: int, height: int) -> None:
        self.profile = tempfile.mkdtemp(prefix="hotmesh-chrome-")
        r_in, self.w_fd = os.pipe()
        self.r_fd, w_out = os.pipe()
        args = [exe, "--headless=new", "--no-sandbox", "--remote-debugging-pipe", "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                "--disable-backgrounding-occluded-windows", "--allow-file-access-from-files",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"]
        # the child's pipe ends go to fds >= 10 first, so the 3/4 remap below cannot clobber them
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (r_in, w_out)]
        os.close(r_in)
        os.close(w_out)
        r_in, w_out = hi
        cmd = " ".join(shlex.quote(a) for a in args) + f" 3<&{r_in} 4>&{w_out}"
        self.proc = subprocess.Popen(["bash", "-c", "exec " + cmd], pass_fds=(r_in, w_out), stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.profile, "stderr.log"), "wb"))
        os.close(r_in)
        os.close(w_out)
        self.next_id = 0
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.replies: dict[int, dict[str, Any]] = {}
        self.cv = threading.Condition()
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self.r_fd, 1 << 20)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self.cv:
                        self.replies[msg["id"]] = msg
                        self.cv.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        i = self.next_id
        msg: dict[str, Any] = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self.w_fd, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            log = pathlib.Path(self.profile, "stderr.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"chromium died: {log}") from None
        with self.cv:
            if not self.cv.wait_for(lambda: i in self.replies, timeout):
                raise TimeoutError(method)
            reply = self.replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.w_fd, self.r_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def check_page(html: pathlib.Path, png: pathlib.Path, width: int = 1000, height: int = 800,
               timeout: float = 90) -> dict[str, Any]:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium / chrome on PATH")
    t0 = time.time()
    c = Chrome(exe, width, height)
    try:
        target = c.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = c.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            c.send(domain, session=s)
        c.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                      "mobile": False}, session=s)
        c.send("Page.navigate", {"url": html.resolve().as_uri()}, session=s)

        def evaluate(expr: str) -> Any:
            return c.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=s)["result"].get("value")

        console: list[str] = []
        errors: list[str] = []

        def drain() -> None:
            while not c.events.empty():
                m = c.events.get()
                method, p = m.get("method"), m.get("params", {})
                if method == "Runtime.consoleAPICalled":
                    text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                    console.append(f"{p['type']}: {text}")
                    if p["type"] in ("error", "assert"):
                        errors.append(text)
                elif method == "Runtime.exceptionThrown":
                    d = p["exceptionDetails"]
                    errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
                elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                    errors.append("log: " + p["entry"]["text"])

        loaded = False
        deadline = time.time() + timeout
        while time.time() < deadline:
            drain()
            # model-viewer loads its model only once it is on screen; the viewer sits below the grade
            evaluate("document.getElementById('viewer') && document.getElementById('viewer').scrollIntoView()")
            try:
                state = evaluate("[!!(window.hotmeshViewerLoaded && window.hotmeshViewerVisible), "
                                 "!!window.hotmeshViewerError, document.readyState === 'complete' && "
                                 "!document.getElementById('mv')]")
            except RuntimeError:
                state = None
            if state and state[2]:  # a page without a viewer (failure report, or none could be made)
                break
            if state and (state[0] or state[1]):
                loaded = bool(state[0])
                break
            time.sleep(0.2)
        # scroll the viewer into the screenshot and let a few frames draw
        evaluate("document.getElementById('viewer') && document.getElementById('viewer').scrollIntoView()")
        time.sleep(1.0)
        c.send("Runtime.evaluate", {"expression": "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))",
                                    "awaitPromise": True}, session=s, timeout=30)
        drain()
        cameras_drawn = bool(evaluate("!!window.hotmeshCamerasDrawn"))
        webgl = evaluate("(() => { const g = document.createElement('canvas').getContext('webgl2'); "
                         "return g ? g.getParameter(g.RENDERER) : null })()")
        shot = c.send("Page.captureScreenshot", {"format": "png"}, session=s)["data"]
        png.write_bytes(base64.b64decode(shot))
    finally:
        c.close()
    return {"ok": loaded and not errors, "loaded": loaded, "errors": errors, "console": console, "webgl": webgl,
            "cameras_drawn": cameras_drawn, "seconds": round(time.time() - t0, 2)}


def viewer_pixels(png: pathlib.Path, html_box: tuple[int, int, int, int] | None = None) -> float:
    """Fraction of screenshot pixels that differ from the viewer's flat background colour (#eef0f3)."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    if html_box is not None:
        x0, y0, x1, y1 = html_box
        a = a[y0:y1, x0:x1]
    bg = np.array([0xEE, 0xF0, 0xF3])
    near_bg = np.abs(a - bg).sum(-1) <= 12
    return float(1.0 - near_bg.mean())


if __name__ == "__main__":
    res = check_page(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
    print(json.dumps({k: v for k, v in res.items() if k != "console"} | {"console": res["console"][-10:]}, indent=1))
