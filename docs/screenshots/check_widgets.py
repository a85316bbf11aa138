"""Manual check of notebook 05's classroom widgets in a real browser on a 1366 x 768 laptop-sized window.

Not part of the test suite (tests/test_widgets.py checks the same layout sizes and texts without a browser).
It runs notebook 05 live in JupyterLab, driven by headless Chromium, and checks what a teacher on a laptop
sees:
  1. the generator explorer's image, its seven controls and its status line all inside the notebook's visible
     area at once, with the still picture hidden while the widget is live;
  2. after a click on "Real" in the quiz, the feedback, the score and both buttons inside the visible area,
     to the right of the picture, and no file name in what the quiz says;
  3. seconds from a slider move (a key press on the psi and interpolation sliders) to the new image;
  4. the notebook saved, its kernel shut down and the page opened again: the still pictures are shown where the
     widgets stood ("Error displaying widget: model not found" is JupyterLab's own text and stays above them).
  5. notebook 05 executed by papermill (as `python -m mura_aug demo` does), opened in JupyterLab: a picture where
     the explorer stood (the widget drawn from the state papermill saves, or else the still picture; JupyterLab
     does not draw widgets of an untrusted notebook, and papermill's copy is untrusted).
It writes docs/widgets_1366x768_explorer.png, docs/widgets_1366x768_quiz.png, docs/widgets_1366x768_reopened.png
and docs/screenshots/check_widgets.md (the figures, the checks and the command), and exits with status 1 when a
check fails.

Needs, besides the project: Chromium from Debian (`apt-get install -y chromium`), and JupyterLab, ipywidgets
and playwright from PyPI in the Python that runs this script (`pip install jupyterlab ipywidgets playwright`;
playwright drives /usr/bin/chromium, so `playwright install` is not needed). Run from the repository root:

    python docs/screenshots/check_widgets.py --workspace /tmp/widgets_ws

A workspace without trained runs first gets the demo's notebooks 01-03 (`python -m mura_aug demo --only
01,02,03`, about 7 minutes on 2 cores); notebook 05 then runs with the demo's parameters and SHOW_WIDGETS on.
Nothing is written outside the workspace, a temporary folder and the four files above: JupyterLab's settings,
workspaces and trust database, and Chromium's profile, live in the temporary folder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
WINDOW = {"width": 1366, "height": 768}  # px, the laptop screen of the issue (the page's viewport)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]
SLIDER_MOVES = 8  # key presses timed per slider
DRAG_STEPS = 12  # mouse positions of one drag along the psi slider
PAPERMILL_COPY = "05_executed_by_papermill.ipynb"
RUN_TIMEOUT_S = 900  # notebook 05 on the demo workspace: about a minute on an idle 2-core CPU

sys.path.insert(0, str(REPO))  # this checkout's mura_aug, whatever else is installed

# --- JavaScript run in the page ----------------------------------------------------------------------------
# The notebook's scroll area (below JupyterLab's menu, tabs and notebook toolbar): what the user can see.
JS_HELPERS = r"""
window.mc = {
  panel() { return window.jupyterapp.shell.currentWidget; },
  visibleArea() {
    const outer = this.panel().content.node;  // the notebook's scroll container
    const r = outer.getBoundingClientRect();
    return {left: Math.max(r.left, 0), top: Math.max(r.top, 0),
            right: Math.min(r.right, window.innerWidth), bottom: Math.min(r.bottom, window.innerHeight)};
  },
  rect(el) { const r = el.getBoundingClientRect();
             return {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height}; },
  cellIndex(text) {
    const cells = this.panel().content.widgets;
    return cells.findIndex(c => c.model.type === 'code' && c.model.sharedModel.getSource().includes(text));
  },
  async scrollToCell(text) {
    const nb = this.panel().content; const i = this.cellIndex(text);
    nb.activeCellIndex = i; await nb.scrollToCell(nb.widgets[i], 'start'); return i;
  },
  explorer() {  // the HBox holding the explorer's image (the one with an 'interpolate' slider)
    return [...this.panel().node.querySelectorAll('.widget-hbox')].find(b =>
      b.querySelector(':scope > img.mura-aug-pixelated') && b.textContent.includes('interpolate'));
  },
  quiz() {
    return [...this.panel().node.querySelectorAll('.widget-hbox')].find(b =>
      b.querySelector(':scope > img.mura-aug-pixelated') && [...b.querySelectorAll('button')].some(
        x => x.textContent.trim() === 'Real'));
  },
  stills() { return [...this.panel().node.querySelectorAll('div[class^="mura-aug-still-"]')]; },
};
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_runs(workspace) -> bool:
    from mura_aug.errors import UserError
    from mura_aug.synth.snapshots import find_snapshots
    from mura_aug.workspace import Workspace

    try:
        find_snapshots(Workspace(workspace), "XR_SHOULDER")
        return True
    except UserError:
        return False


def prepare_notebook(workspace: Path, folder: Path) -> Path:
    """Notebook 05 with the demo's parameters, SHOW_WIDGETS on, written unexecuted into `folder`."""
    import nbformat
    import yaml
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from mura_aug.notebooks.nbtools import NOTEBOOKS_DIR

    demo = yaml.safe_load((NOTEBOOKS_DIR / "demo_params.yaml").read_text())
    parameters = {**demo.get("common", {}), **demo["05"], "WORKSPACE": str(workspace), "SHOW_WIDGETS": True,
                  "DEVICE": "cpu"}
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOKS_DIR / "05_crop_sharpen.ipynb")), parameters)
    target = folder / "05_crop_sharpen.ipynb"
    nbformat.write(nb, str(target))
    return target


def start_jupyterlab(root: Path, state: Path, port: int, token: str) -> subprocess.Popen:
    # JupyterLab's defaults, except its news prompt, which would cover part of the screenshots
    news = state / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false"}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               MPLBACKEND="module://matplotlib_inline.backend_inline",
               JUPYTERLAB_SETTINGS_DIR=str(state / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(state / "lab-ws"),
               JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTER_DATA_DIR=str(state / "data"),  # the trust database of the saved notebook
               IPYTHONDIR=str(state / "ipython"))
    env.pop("MPLBACKEND")  # the notebook's %matplotlib inline decides
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               "--LabApp.expose_app_in_browser=True"]  # window.jupyterapp: run cells and scroll by command
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # a container's root
    log = open(state / "jupyterlab.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"JupyterLab did not start; see {state / 'jupyterlab.log'}")
            time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"JupyterLab did not answer within 120 s; see {state / 'jupyterlab.log'}")


def api(port, token, path, method="GET"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}?token={token}", method=method)
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = answer.read()
    return json.loads(body) if body else None


def inside(rect, area, slack=1.0) -> bool:
    return (rect["width"] > 0 and rect["height"] > 0 and rect["left"] >= area["left"] - slack
            and rect["right"] <= area["right"] + slack and rect["top"] >= area["top"] - slack
            and rect["bottom"] <= area["bottom"] + slack)


def open_notebook(page, url):
    """Open the notebook of `url` and wait until it is the current tab, its cells loaded, its kernel known."""
    page.goto(url)
    name = url.split("?")[0].rsplit("/", 1)[1]
    page.wait_for_function("""(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        return w && w.context && w.context.path === name && w.context.isReady && w.content.widgets.length > 0; }""",
                           arg=name, timeout=120_000)
    page.evaluate(JS_HELPERS)
    page.wait_for_function("() => window.mc.panel().sessionContext.session?.kernel", timeout=120_000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path, help="a demo workspace (trained into when empty)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (JupyterLab's log)")
    args = parser.parse_args()
    workspace = args.workspace.resolve()
    from playwright.sync_api import sync_playwright

    if not has_runs(workspace):
        print(f"training the demo's runs into {workspace} (notebooks 01-03) ...", flush=True)
        subprocess.run([sys.executable, "-m", "mura_aug", "demo", "--workspace", str(workspace), "--only",
                        "01,02,03", "--no-progress"], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    temp = Path(tempfile.mkdtemp(prefix="check_widgets_"))
    checks, figures = [], {}

    def check(name, ok, detail=""):
        checks.append((name, bool(ok), detail))
        print(("PASS " if ok else "FAIL ") + name + (f" ({detail})" if detail else ""), flush=True)

    (temp / "nb").mkdir()
    notebook = prepare_notebook(workspace, temp / "nb")
    from mura_aug.notebooks.nbtools import execute_notebook

    print("running notebook 05 with papermill ...", flush=True)
    execute_notebook(notebook, temp / "nb" / PAPERMILL_COPY, cwd=temp / "nb", timeout_s=RUN_TIMEOUT_S)
    port, token = free_port(), secrets.token_hex(16)
    server = start_jupyterlab(temp / "nb", temp, port, token)
    url = f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(temp / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
                viewport=WINDOW, screen=WINDOW)
            page = browser.pages[0] if browser.pages else browser.new_page()
            try:
                versions = run_checks(page, browser, url, port, token, check, figures)
            except Exception:
                page.screenshot(path=str(temp / "failure.png"))
                (temp / "failure.html").write_text(page.content())
                print(f"failed: the page as it was is in {temp} (failure.png, failure.html)", flush=True)
                args.keep = True
                raise
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        if not args.keep:
            shutil.rmtree(temp, ignore_errors=True)
    write_results(checks, figures, versions)
    return 0 if all(ok for _, ok, _ in checks) else 1


def run_checks(page, browser, url, port, token, check, figures) -> dict:
    """The four checks of the module's docstring; returns the browser's version."""
    open_notebook(page, url)
    started = time.perf_counter()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # the quiz is the last thing the notebook shows; the explorer comes one cell before it
    page.wait_for_function("""() => { const i = window.mc.cellIndex('quiz_widget');
        const cell = window.mc.panel().content.widgets[i];
        return cell.model.executionCount !== null && !cell.node.classList.contains('jp-mod-pending')
               && window.mc.panel().sessionContext.session.kernel.status === 'idle'; }""",
                           timeout=RUN_TIMEOUT_S * 1000, polling=2000)
    page.evaluate("async () => { await window.mc.scrollToCell('quiz_widget'); }")
    page.wait_for_function("() => !!window.mc.quiz()", timeout=60_000)
    figures["notebook 05 run in the browser (s)"] = round(time.perf_counter() - started, 1)
    errors = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="
                           "\"application/vnd.jupyter.stderr\"]')].map(e => e.textContent).join(' ')")
    check("notebook 05 ran to its end without a traceback", "Traceback" not in errors, errors[:200])

    # 1. the explorer at the top of the notebook's visible area
    page.evaluate("async () => { await window.mc.scrollToCell('explorer_widget'); }")
    page.wait_for_function("() => !!window.mc.explorer()", timeout=60_000)
    page.wait_for_timeout(500)
    layout = page.evaluate("""() => { const box = window.mc.explorer(), area = window.mc.visibleArea();
        const img = box.querySelector(':scope > img'), column = img.nextElementSibling;
        const parts = {image: img};
        [...column.children].forEach((c, i) => { parts[i + ': ' + c.textContent.trim().slice(0, 12)] = c; });
        const out = {area, natural: [img.naturalWidth, img.naturalHeight], parts: {},
                     rendering: getComputedStyle(img).imageRendering};
        for (const [k, el] of Object.entries(parts)) out.parts[k] = window.mc.rect(el);
        out.still = window.mc.stills().map(s => getComputedStyle(s).display);
        return out; }""")
    area = layout["area"]
    outside = [k for k, r in layout["parts"].items() if not inside(r, area)]
    check("explorer: image, 7 controls and status inside the visible notebook area at once",
          not outside and len(layout["parts"]) >= 9,
          f"visible area {area['right'] - area['left']:.0f} x {area['bottom'] - area['top']:.0f} px; "
          f"parts {sorted(layout['parts'])}; outside: {outside or 'none'}")
    image = layout["parts"]["image"]
    figures["explorer: height of image, controls and status (px)"] = round(
        max(r["bottom"] for r in layout["parts"].values()) - min(r["top"] for r in layout["parts"].values()))
    check("explorer: image shown at 256 x 256 px, pixel for pixel, image-rendering pixelated",
          (round(image["width"]), round(image["height"])) == (256, 256)
          and layout["natural"] == [256, 256] and layout["rendering"] == "pixelated",
          f"{image['width']:.0f} x {image['height']:.0f} px, image-rendering {layout['rendering']}")
    check("still pictures hidden while the widgets are live",
          layout["still"] and set(layout["still"]) == {"none"}, f"{len(layout['still'])} stills")
    page.screenshot(path=str(DOCS / "widgets_1366x768_explorer.png"))

    # 3. seconds per slider move (key presses: each one moves the slider by one step)
    for slider in ("psi", "interpolate"):
        handle = page.locator(".widget-slider", has_text=slider).locator(".noUi-handle").first
        handle.focus()
        seconds = []
        for _ in range(SLIDER_MOVES):
            before = page.evaluate("() => window.mc.explorer().querySelector(':scope > img').src")
            t0 = time.perf_counter()
            page.keyboard.press("ArrowLeft" if slider == "psi" else "ArrowRight")
            page.wait_for_function("(old) => window.mc.explorer().querySelector(':scope > img').src !== old",
                                   arg=before, timeout=60_000, polling="raf")
            seconds.append(time.perf_counter() - t0)
        figures[f"{slider} slider: seconds per move, median (min-max of {SLIDER_MOVES})"] = (
            f"{statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})")
    status_js = ("() => window.mc.explorer().querySelector(':scope > img').nextElementSibling"
                 ".lastElementChild.textContent")
    status = page.evaluate(status_js)
    check("explorer status follows the sliders", "towards seed" in status and "psi 0.60" in status,
          status[-80:].strip())
    # a drag: the mouse moves the psi handle through DRAG_STEPS positions, each sending a value to the kernel
    handle = page.locator(".widget-slider", has_text="psi").locator(".noUi-handle").first
    box = handle.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y, steps=DRAG_STEPS)
    page.mouse.up()
    released, last_change, seen = time.perf_counter(), time.perf_counter(), page.evaluate(status_js)
    while time.perf_counter() - last_change < 1.5:  # settled: no new image for 1.5 s
        page.wait_for_timeout(20)
        now = page.evaluate(status_js)
        if now != seen:
            seen, last_change = now, time.perf_counter()
    figures[f"psi slider dragged through {DRAG_STEPS} positions: seconds from release to the last image"] = (
        f"{max(0.0, last_change - released):.2f}")

    # 2. the quiz after one click
    page.evaluate("() => window.mc.quiz().scrollIntoView({block: 'center'})")
    page.wait_for_timeout(500)
    quiz = page.locator(".widget-hbox", has=page.locator("button", has_text="Real")).last
    t0 = time.perf_counter()
    quiz.locator("button", has_text="Real").click()
    page.wait_for_function("() => /(Right|Wrong): picture 1 was/.test(window.mc.quiz().textContent)",
                           timeout=60_000)
    figures["quiz: seconds from a click to the feedback"] = f"{time.perf_counter() - t0:.2f}"
    page.wait_for_timeout(300)
    qlayout = page.evaluate("""() => { const box = window.mc.quiz(), area = window.mc.visibleArea();
        const img = box.querySelector(':scope > img'), column = img.nextElementSibling;
        const texts = [...column.querySelectorAll('.widget-html')];
        const buttons = [...column.querySelectorAll('button')];
        return {area, image: window.mc.rect(img), text: column.innerText,
                parts: Object.fromEntries([...texts.map((t, i) => ['text' + i, window.mc.rect(t)]),
                                           ...buttons.map(b => [b.textContent.trim(), window.mc.rect(b)])])};
        }""")
    qarea, qimage = qlayout["area"], qlayout["image"]
    figures["quiz: height of picture, buttons, feedback and score (px)"] = round(
        max(r["bottom"] for r in [qimage, *qlayout["parts"].values()])
        - min(r["top"] for r in [qimage, *qlayout["parts"].values()]))
    outside = [k for k, r in {**qlayout["parts"], "image": qimage}.items() if not inside(r, qarea)]
    check("quiz: picture, buttons, feedback and score inside the visible area after a click",
          not outside, f"outside: {outside or 'none'}")
    beside = all(r["left"] >= qimage["right"] and r["top"] < qimage["bottom"]
                 for r in qlayout["parts"].values())
    check("quiz: buttons, feedback and score to the right of the picture", beside)
    said = qlayout["text"]
    leaks = [w for w in ("XR_SHOULDER", "patient", "positive", "negative", ".png", "kimg") if w in said]
    check("quiz: what it says names no file, run, class or patient", not leaks,
          " / ".join(line for line in said.splitlines() if line.strip()))
    page.screenshot(path=str(DOCS / "widgets_1366x768_quiz.png"))

    # 4. saved, kernel gone, opened again
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.mc.panel().context.model.dirty", timeout=60_000)
    for session in api(port, token, "/api/sessions"):
        api(port, token, f"/api/kernels/{session['kernel']['id']}", method="DELETE")
    page.close()
    page = browser.new_page()
    open_notebook(page, url)
    page.evaluate("async () => { await window.mc.scrollToCell('explorer_widget'); }")
    page.wait_for_function("() => window.mc.stills().length >= 1", timeout=60_000)
    try:  # the widget manager gives up on the models once the new kernel is connected
        page.wait_for_function("() => document.body.innerText.includes('Error displaying widget')", timeout=30_000)
    except Exception:  # playwright's TimeoutError: then it still says "Loading widget..."
        pass
    page.wait_for_timeout(500)
    reopened = page.evaluate("""() => { const area = window.mc.visibleArea();
        const s = window.mc.stills()[0], img = s.querySelector('img');
        return {display: getComputedStyle(s).display, img: window.mc.rect(img), natural: img.naturalWidth,
                shown: window.mc.stills().filter(x => getComputedStyle(x).display !== 'none').length,
                area, stills: window.mc.stills().length,
                error: document.body.innerText.includes('model not found')}; }""")
    check("reopened without its kernel: the explorer's still picture is shown, inside the visible area",
          reopened["display"] != "none" and reopened["natural"] == 256 and inside(reopened["img"], reopened["area"]),
          f"{reopened['shown']} of {reopened['stills']} stills shown; JupyterLab's 'Error displaying widget: "
          f"model not found' above them: {reopened['error']}")
    page.screenshot(path=str(DOCS / "widgets_1366x768_reopened.png"))

    # 5. the copy papermill executed, opened in JupyterLab
    page.close()
    page = browser.new_page()
    open_notebook(page, url.replace(f"/{Path(url.split('?')[0]).name}?", f"/{PAPERMILL_COPY}?"))
    page.evaluate("async () => { await window.mc.scrollToCell('explorer_widget'); }")
    page.wait_for_timeout(5000)  # the widget manager restores saved models, or gives up on them
    executed = page.evaluate("""() => { const area = window.mc.visibleArea(), box = window.mc.explorer();
        const still = window.mc.stills()[0];
        const stillShown = !!still && getComputedStyle(still).display !== 'none';
        const img = box ? box.querySelector(':scope > img') : (stillShown ? still.querySelector('img') : null);
        return {widget: !!box, still: stillShown, area, img: img ? window.mc.rect(img) : null,
                natural: img ? img.naturalWidth : 0}; }""")
    check("papermill's executed copy shows a picture where the explorer stood",
          executed["img"] and executed["natural"] == 256 and inside(executed["img"], executed["area"]),
          "the widget, drawn from the state papermill saved" if executed["widget"] else
          ("the still picture" if executed["still"] else "neither")
          + f"; image {executed['natural']} px wide at {executed['img']}")
    page.screenshot(path=str(Path(tempfile.gettempdir()) / "check_widgets_papermill.png"))
    return {"chromium": browser.browser.version if browser.browser else "?"}


def write_results(checks, figures, versions):
    from importlib import metadata

    for name in ("jupyterlab", "ipywidgets", "playwright"):
        versions[name] = metadata.version(name)
    try:
        versions["chromium"] = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    lines = ["# Classroom widgets in a real browser, 1366 x 768 (manual check)", "",
             f"Written by `python {' '.join(sys.argv)}` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}): notebook 05 on the demo workspace, run live "
             "in JupyterLab in headless Chromium with a 1366 x 768 px page (JupyterLab's default layout, file "
             "browser open).", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work (timings are "
             "upper bounds for an idle laptop); " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", "",
             "| measured | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in figures.items()]
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} | {detail.replace('|', '/')} |" for name, ok, detail in checks]
    lines += ["", "Screenshots: [explorer](../widgets_1366x768_explorer.png), [quiz after a click]"
              "(../widgets_1366x768_quiz.png), [reopened without its kernel](../widgets_1366x768_reopened.png).", ""]
    (DOCS / "screenshots" / "check_widgets.md").write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
