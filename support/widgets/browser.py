"""Check the panels in a real browser: JupyterLab on 127.0.0.1 with a token, Chromium driven by Playwright.

    python -m support.widgets.browser --runs-dir runs --out figures/ui

opens ``notebooks/00_start_here.ipynb`` in JupyterLab, runs all cells, waits
for the loss explorer and the results panel to render, changes the metric,
opens every tab of the panel (CAMs included) and saves screenshots under
``--out``. ``tests/test_browser_ui.py`` runs the same :func:`check_panels`.
Chromium is Debian's ``chromium`` (``apt-get install chromium``), found on the
PATH or through ``$LOSSBENCH_CHROMIUM``; Playwright's own browser download is
never used. The server has a random token and its own config/runtime folders.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from .. import logs, paths

log = logs.get("browser")

NOTEBOOK = paths.PROJECT_ROOT / "notebooks" / "00_start_here.ipynb"
TABS = {"confusion": "Confusions", "reliability": "Reliability", "curves": "Training curves",
        "table": "Table", "cams": "CAMs"}


def find_chromium() -> Optional[str]:
    """Path of a Chromium executable (``$LOSSBENCH_CHROMIUM``, else ``chromium`` on the PATH), or None."""
    given = os.environ.get("LOSSBENCH_CHROMIUM")
    if given:
        if not os.access(given, os.X_OK):
            raise FileNotFoundError(f"LOSSBENCH_CHROMIUM={given} is not an executable; unset it or fix the path")
        return given
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    token: str
    root: Path
    log: Path


@contextmanager
def jupyterlab(root: Path, env: Optional[Dict[str, str]] = None, timeout: float = 120.0):
    """A JupyterLab server on 127.0.0.1 with a random token serving ``root``; stopped on exit."""
    root = Path(root)
    home = Path(tempfile.mkdtemp(prefix="lossbench-jupyter-"))
    labconfig = home / "config" / "labconfig"
    labconfig.mkdir(parents=True)
    # no "get Jupyter news?" toast over the screenshots (the announcements plugin fetches from the web)
    (labconfig / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)  # start the notebook's kernel without the "Select Kernel" dialog
    (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))
    token, port = secrets.token_hex(16), _free_port()
    run_env = dict(os.environ, **(env or {}), JUPYTER_CONFIG_DIR=str(home / "config"),
                   JUPYTER_RUNTIME_DIR=str(home / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), MPLBACKEND="Agg")
    path = run_env.get("PYTHONPATH", "")
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(paths.PROJECT_ROOT), path) if p)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
           "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root; the server still binds to 127.0.0.1 only
    log = home / "jupyterlab.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=run_env)
    try:
        url = f"http://127.0.0.1:{port}/"
        sel = selectors.DefaultSelector()
        sel.register(proc.stderr, selectors.EVENT_READ)
        deadline, lines = time.monotonic() + timeout, []
        while not any(url in line for line in lines):  # the server prints its URL once it listens
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start within {timeout:.0f} s (exit {proc.poll()}):\n"
                                   + "".join(lines[-20:]))
            if sel.select(timeout=1.0):
                line = proc.stderr.readline()
                if line:
                    lines.append(line)
        sel.close()
        with log.open("w") as fh:
            fh.writelines(lines)
        drain = threading.Thread(target=lambda: shutil.copyfileobj(proc.stderr, log.open("a")), daemon=True)
        drain.start()  # keep reading so that a chatty server never blocks on a full pipe
        yield Server(url, token, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _image_ready(page, css: str, timeout_ms: int) -> str:
    """Wait until ``img<css>`` shows a decoded image; return its ``src``."""
    page.wait_for_function(f"() => {{ const i = document.querySelector('img{css}'); "
                           "return i && i.complete && i.naturalWidth > 0; }", timeout=timeout_ms)
    return page.eval_on_selector(f"img{css}", "i => i.src")


def check_panels(server: Server, notebook: str, out_dir: Path, chromium: str, add_run: Optional[Callable] = None,
                 new_loss: Optional[str] = None, timeout_s: float = 240.0, tabs=tuple(TABS)) -> dict:
    """Open ``notebook`` (relative to the server root), run all cells and exercise both panels.

    Returns what was observed (for assertions): option lists, the bar image's
    source before and after the metric change, the panel message, and the
    screenshot paths. ``tabs`` (keys of :data:`TABS`) are opened and shot in
    turn. ``add_run`` (optional) is called after the first checks;
    the loss ``new_loss`` must then appear after pressing Refresh.
    """
    from playwright.sync_api import sync_playwright

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ms = int(timeout_s * 1000)
    seen: dict = {"screenshots": []}

    def shot(locator, name):
        path = out_dir / f"{name}.png"
        locator.screenshot(path=str(path))
        seen["screenshots"].append(path)

    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=args + ["--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1900})
            page.set_default_timeout(ms)
            page.goto(f"{server.url}lab/tree/{notebook}?reset&token={server.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            page.locator("#jp-main-statusbar", has_text="Idle").wait_for()  # kernel started and connected
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            panel = page.locator(".lossbench-results")
            panel.wait_for(state="visible")
            seen["bars_before"] = _image_ready(page, ".lossbench-view-bars", ms)
            seen["losses"] = page.eval_on_selector_all(".lossbench-losses option", "os => os.map(o => o.value)")
            seen["metrics"] = page.eval_on_selector_all(".lossbench-metric option", "os => os.map(o => o.value)")
            explorer = page.locator(".jp-Cell").filter(has_text="LossExplorer()").locator(".jp-OutputArea")
            page.wait_for_function("() => [...document.querySelectorAll('.jp-OutputArea img')]"
                                   ".some(i => i.naturalWidth > 0 && !i.classList.contains('lossbench-view-bars'))")
            shot(explorer, "loss_explorer")
            shot(panel, "results_bars_mcc")
            # change a selection: the metric; the bar plot must be redrawn from other data
            page.select_option(".lossbench-metric select", "ece")
            page.wait_for_function("b => { const i = document.querySelector('img.lossbench-view-bars');"
                                   " return i && i.src !== b && i.naturalWidth > 0; }", arg=seen["bars_before"])
            seen["bars_after"] = page.eval_on_selector("img.lossbench-view-bars", "i => i.src")
            page.locator(".lossbench-message", has_text="ece").wait_for()
            seen["message"] = page.inner_text(".lossbench-message")
            shot(panel, "results_bars_ece")
            for view in tabs:
                panel.get_by_role("tab", name=TABS[view], exact=True).click()
                if view == "cams":
                    page.locator(".lossbench-cam-button").click()
                if view == "table":
                    page.locator(".lossbench-view-table table").wait_for()
                else:
                    _image_ready(page, f".lossbench-view-{view}", ms)
                shot(panel, f"results_{view}")
            if add_run is not None:
                add_run()
                page.locator(".lossbench-refresh").click()
                page.locator(f".lossbench-losses option[value='{new_loss}']").wait_for(state="attached")
                seen["losses_after_refresh"] = page.eval_on_selector_all(".lossbench-losses option",
                                                                         "os => os.map(o => o.value)")
        except Exception:
            page.screenshot(path=str(out_dir / "failure.png"))  # what the browser showed when a wait failed
            raise
        finally:
            browser.close()
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m support.widgets.browser", description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", default=str(paths.runs_dir()), help="runs folder the panel reads")
    ap.add_argument("--out", default=str(paths.figures_dir() / "ui"), help="folder for the screenshots")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for each wait in the browser")
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        log.error("no chromium found: install Debian's package (apt-get install chromium) or set LOSSBENCH_CHROMIUM")
        return 2
    root = Path(tempfile.mkdtemp(prefix="lossbench-ui-"))
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    env = {"LOSSBENCH_RUNS_DIR": str(Path(args.runs_dir).resolve())}
    with jupyterlab(root, env=env) as server:
        seen = check_panels(server, NOTEBOOK.name, Path(args.out), chromium, timeout_s=args.timeout)
    log.info(f"losses: {seen['losses']}\nmessage: {seen['message']}\nscreenshots:\n  "
             + "\n  ".join(map(str, seen["screenshots"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
