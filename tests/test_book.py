"""Build the Jupyter book once, strictly and from scratch, then check its pages: as HTML, and as
rendered by headless Chromium (math typeset, widgets drawn, nothing fetched from outside).

The build runs every notebook in quick mode (ODC_PROFILE=quick) with a fresh jupyter-cache, so
it takes as long as the notebooks do. Training runs are cached in $ODC_CACHE (default
book/_build/odc_runs), so a second pytest run on the same machine reuses them.
Run with -s to see the build and notebook times; they are also written to build_times.json.
Screenshots of every page land in book/_build/screenshots/.
"""
from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tests/browser.py
from bs4 import BeautifulSoup
from odc_mini.study.notebook import FACTS_LOG_ENV

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
CHROMIUM = "/usr/bin/chromium"

# Figures (PNG images) each page must show at least, in its main content. Chapters that do not
# exist yet are placeholders with no figures; they fail this check until they are written.
MIN_FIGURES = {
    "00_preface": 0,
    "01_clustering_as_supervision": 1,
    "02_alternating": 1,
    "03_online": 1,
    "04_side_by_side": 1,
    "05_what_was_learned": 1,
    "06_full_scale": 1,
    "07_ablations": 1,
    "08_results": 3,
    "a_engineering": 1,
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def toc_pages() -> list[str]:
    """Every page named in book/_toc.yml, in reading order (root first)."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(p).with_suffix("")) for p in pages]


PAGES = toc_pages()


def book_env() -> dict[str, str]:
    """The environment the notebooks run in: quick profile, no display, a persistent run cache."""
    env = dict(os.environ)
    env["ODC_PROFILE"] = "quick"
    env["MPLBACKEND"] = "Agg"
    env["ODC_CACHE"] = os.environ.get("ODC_CACHE") or str(BOOK / "_build" / "odc_runs")
    env["NO_COLOR"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def ensure_vendored() -> None:
    """Fetch MathJax and the widget JavaScript into book/_vendor (a no-op when it is complete)."""
    result = subprocess.run(["bash", str(BOOK / "vendor_js.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        hint = "npm is not installed: install Node.js/npm, then " if not shutil.which("npm") else ""
        pytest.fail(f"{hint}`bash book/vendor_js.sh` must fill book/_vendor before the book "
                    f"can build:\n{result.stdout}{result.stderr}")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def notebook_times(log: str, cache_dir: Path) -> dict[str, dict]:
    """Per notebook, from the build log: the seconds its execution took, or, when the build
    reused the outputs of a notebook with identical code, that cache entry and its seconds."""
    times: dict[str, dict] = {}
    for line in log.splitlines():
        m = re.search(r"([^/\s]+)\.ipynb: Executed notebook in ([\d.]+) seconds", line)
        if m:
            times[m.group(1)] = {"executed": True, "seconds": float(m.group(2))}
        m = re.search(r"([^/\s]+)\.ipynb: Using cached notebook: ID=(\d+)", line)
        if m:
            times.setdefault(m.group(1), {"executed": False, "cache_id": int(m.group(2))})
    try:
        from jupyter_cache import get_cache

        cache = get_cache(str(cache_dir))
        for entry in times.values():
            if "cache_id" in entry:
                data = cache.get_cache_record(entry["cache_id"]).data or {}
                entry["seconds"] = round(data.get("execution_seconds") or 0, 2)
    except Exception as exc:  # timings are information, never a reason to fail
        times["_error"] = {"reading jupyter-cache": repr(exc)}
    return times


@functools.lru_cache(maxsize=32)
def article(html: str) -> BeautifulSoup:
    """The page's main content (the chapter itself, without sidebars and header buttons)."""
    soup = BeautifulSoup(html, "html.parser")
    return soup.find("article") or soup


def prose_text(node: BeautifulSoup) -> str:
    """Visible text outside code blocks, outputs, scripts and styles."""
    node = BeautifulSoup(str(node), "html.parser")
    for tag in node.find_all(["script", "style", "pre", "code", "mjx-assistive-mml"]):
        tag.decompose()
    return node.get_text(" ")


def has_class(tag, fragment: str) -> bool:
    return any(fragment in c for c in (tag.get("class") or []))


# ---------------------------------------------------------------------------------------------
# The build (once per test session)
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Build:
    returncode: int
    log: str = dataclasses.field(repr=False)
    html: Path

@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """Build book/ into a fresh folder: a clean jupyter-cache, so every notebook executes."""
    ensure_vendored()
    out = tmp_path_factory.mktemp("book_build")
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", "--all", "-W", "-n",
           "--keep-going", "--path-output", str(out), str(BOOK)]
    start = time.monotonic()
    env = {**book_env(), FACTS_LOG_ENV: str(out / "facts.jsonl")}   # what each page quotes
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - start
    log = ANSI.sub("", proc.stdout)
    (out / "build.log").write_text(log)

    times = {"build_wall_s": round(wall, 1), "returncode": proc.returncode,
             "notebooks": notebook_times(log, out / "_build" / ".jupyter_cache")}
    text = json.dumps(times, indent=2)
    (out / "build_times.json").write_text(text)
    (BOOK / "_build").mkdir(exist_ok=True)
    (BOOK / "_build" / "build_times.json").write_text(text)
    print(f"\nbook build: {wall:.1f} s, exit {proc.returncode}, log {out / 'build.log'}\n{text}")
    return Build(proc.returncode, log, out / "_build" / "html")


def page_html(built_book, page: str) -> str:
    path = built_book.html / f"{page}.html"
    assert path.is_file(), f"{page}.html was not built"
    return path.read_text(encoding="utf-8")


def failure_excerpt(log: str, lines: int = 150) -> str:
    """The log from its first warning or error on (where -W makes the build fail), then the tail."""
    rows = log.splitlines()
    first = next((i for i, row in enumerate(rows) if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", row)
                  and "IPKernelApp" not in row), max(len(rows) - lines, 0))
    head = rows[first:first + lines]
    tail = rows[max(first + lines, len(rows) - 30):]
    return "\n".join(head + (["[...]"] if tail else []) + tail)


def test_build_succeeds(built_book):
    assert built_book.returncode == 0, f"jupyter-book build failed:\n{failure_excerpt(built_book.log)}"


def test_pages_quote_the_same_numbers_for_the_same_run(built_book):
    """Every page that quotes a fact of a run (nbk.glue_fact) quotes the same text for it: the
    chapters read one run per setting. Facts quoted by several pages must exist for this to
    test anything, so at least ten are required to be."""
    from odc_mini.study import notebook as nbk

    log = built_book.html.parent.parent / "facts.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert not (conflicts := nbk.fact_conflicts(records)), "\n".join(conflicts)
    pages: dict[tuple, set] = {}
    for r in records:
        pages.setdefault((r["name"], r["fact"]), set()).add(r["process"])
    shared = sorted(k for k, v in pages.items() if len(v) >= 2)
    assert len(shared) >= 10, f"facts quoted on two pages or more: {shared}"


@pytest.mark.parametrize("page", PAGES)
def test_page_exists(built_book, page):
    assert (built_book.html / f"{page}.html").is_file()


@pytest.mark.parametrize("page", PAGES)
def test_page_has_figures(built_book, page):
    content = article(page_html(built_book, page))
    pngs = [img for img in content.find_all("img")
            if re.search(r"(\.png($|\?))|^data:image/png", img.get("src", ""))]
    wanted = MIN_FIGURES.get(page, 0)
    assert len(pngs) >= wanted, f"{page}: {len(pngs)} PNG figures, expected at least {wanted}"


@pytest.mark.parametrize("page", PAGES)
def test_page_has_no_error_output(built_book, page):
    content = article(page_html(built_book, page))
    errors = [d for d in content.find_all(class_=re.compile(r"\b(traceback|error)\b"))
              if has_class(d, "output")]
    assert not errors and "Traceback" not in content.get_text(), f"{page} shows an error output"


@pytest.mark.parametrize("page", PAGES)
def test_page_has_no_unrendered_markup(built_book, page):
    """No MyST role, directive or unfilled nbk.prose placeholder shows as typed; and the text
    that code cells display is rendered (math typeset by MathJax, not left as $...$)."""
    text = prose_text(article(page_html(built_book, page)))
    for raw in ("{glue", "{cite}", "```{", "{{"):
        assert raw not in text, f"{page} shows {raw!r} as typed"


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_nothing_from_a_cdn(built_book, page):
    """Every script, stylesheet, image and frame is a local file (links to GitHub/Colab are
    fine). sphinx-thebe writes an unpkg URL into an inline constant; it is fetched only if
    thebe is enabled, which this book does not do, and the browser test below checks that."""
    soup = BeautifulSoup(page_html(built_book, page), "html.parser")
    remote = [f"<{t.name} {attr}={t[attr]}>"
              for t in soup.find_all(["script", "link", "img", "iframe", "source", "embed"])
              for attr in ("src", "href") if re.match(r"(https?:)?//", t.get(attr, ""))]
    assert not remote, f"{page} loads remote assets: {remote}"


# ---------------------------------------------------------------------------------------------
# In a browser: headless Chromium against a loopback HTTP server
# ---------------------------------------------------------------------------------------------

class _Server(http.server.ThreadingHTTPServer):
    """A static server on 127.0.0.1 that remembers what was asked of it."""

    def __init__(self, root: Path):
        self.requests: list[tuple[str, int]] = []
        handler = functools.partial(_Handler, directory=str(root))
        super().__init__(("127.0.0.1", 0), handler)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        self.server.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, *args):
        pass


def run_chromium(url: str, screenshot: Path, netlog: Path, profile: Path) -> str:
    """Load url in headless Chromium; return the DOM after scripts ran; save a screenshot and a
    network log."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
           "--window-size=1280,2400", f"--screenshot={screenshot}", f"--log-net-log={netlog}",
           "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed on {url}:\n{proc.stderr[-2000:]}"
    return proc.stdout


def page_requests(netlog: Path) -> list[tuple[str, str]]:
    """(initiator, url) for every URL request in a Chromium net log. Requests the page made carry
    the page's origin as initiator; the browser's own background traffic does not."""
    data = json.loads(netlog.read_text())
    start = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [(e["params"].get("initiator", ""), e["params"]["url"])
            for e in data["events"] if e["type"] == start and "url" in e.get("params", {})]


@pytest.fixture(scope="module")
def rendered(built_book):
    """Every page as Chromium rendered it: DOM, requests it made, 404s the server answered."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    shots = BOOK / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    server = _Server(built_book.html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    pages = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for page in PAGES:
                if not (built_book.html / f"{page}.html").is_file():
                    continue
                server.requests.clear()
                netlog = Path(tmp) / f"{page}.netlog.json"
                dom = run_chromium(f"{origin}/{page}.html", shots / f"{page}.png", netlog,
                                   Path(tmp) / f"profile-{page}")
                pages[page] = {"dom": dom, "requests": page_requests(netlog),
                               "served": list(server.requests)}
    finally:
        server.shutdown()
        server.server_close()
    return {"origin": origin, "pages": pages}


def rendered_page(rendered, page):
    if page not in rendered["pages"]:
        pytest.fail(f"{page}.html was not built")
    return rendered["pages"][page]


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(built_book, rendered, page):
    source = article(page_html(built_book, page))
    if not source.find(class_="math"):
        pytest.skip(f"{page} has no math")
    content = article(rendered_page(rendered, page)["dom"])
    raw = [s for s in ("\\(", "\\[", "$$") if s in prose_text(content)]
    assert content.find("mjx-container") and not raw, f"{page}: math not typeset (raw {raw})"


@pytest.mark.parametrize("page", PAGES)
def test_widgets_are_drawn(built_book, rendered, page):
    views = page_html(built_book, page).count("application/vnd.jupyter.widget-view+json")
    if not views:
        pytest.skip(f"{page} has no widgets")
    content = article(rendered_page(rendered, page)["dom"])
    drawn = [d for d in content.find_all(class_="widget-subarea")
             if d.find(class_=re.compile(r"jupyter-widgets|widget-"))]
    assert len(drawn) >= views, f"{page}: {len(drawn)} of {views} widget outputs drawn"


@pytest.mark.parametrize("page", PAGES)
def test_browser_requests_stay_on_loopback(rendered, page):
    origin = rendered["origin"]
    made = rendered_page(rendered, page)["requests"]
    by_page = [url for initiator, url in made if initiator == origin or url.startswith(origin)]
    leaving = [url for initiator, url in made if initiator == origin and not url.startswith(origin)]
    assert by_page and not leaving, f"{page} requested outside loopback: {leaving}"


@pytest.mark.parametrize("page", PAGES)
def test_browser_finds_every_local_file(rendered, page):
    missing = [path for path, code in rendered_page(rendered, page)["served"]
               if code == 404 and not path.startswith("/favicon.ico")]
    assert not missing, f"{page}: the server answered 404 for {missing}"


def widget_state(html: str) -> dict:
    """The widget models saved in a page (myst-nb embeds them as widget-state JSON)."""
    soup = BeautifulSoup(html, "html.parser")
    models = {}
    for tag in soup.find_all("script", type="application/vnd.jupyter.widget-state+json"):
        models.update(json.loads(tag.string or "{}").get("state", {}))
    return models


@pytest.mark.parametrize("page", PAGES)
def test_sliders_switch_frames_without_python(built_book, page):
    """On the static page a slider can only work through a browser-side link: every frame stack
    (viz.scrubber) must be the target of a LinkModel, and hold one image per frame."""
    models = widget_state(page_html(built_book, page))
    stacks = {mid: m for mid, m in models.items() if m["model_name"] == "StackModel"}
    if not stacks:
        pytest.skip(f"{page} has no frame stacks")
    linked = {m["state"]["target"][0].removeprefix("IPY_MODEL_")
              for m in models.values() if m["model_name"] == "LinkModel"}
    for mid, stack in stacks.items():
        assert mid in linked, f"{page}: a frame stack is not linked to a slider"
        children = [c.removeprefix("IPY_MODEL_") for c in stack["state"]["children"]]
        assert children and all(models[c]["model_name"] == "ImageModel" for c in children)


# ---------------------------------------------------------------------------------------------
# As a reader: a browser that moves every slider, presses every play button, and watches for
# uncaught JavaScript exceptions (tests/browser.py drives Chromium over DevTools)
# ---------------------------------------------------------------------------------------------

VISIBLE_FRAMES = """(() => Array.from(document.querySelectorAll('.widget-subarea, .jp-OutputArea-output'))
  .map(area => Array.from(area.querySelectorAll('img'))
    .filter(img => img.offsetParent !== null && img.getBoundingClientRect().width > 0)
    .map(img => img.src).join('|'))
  .filter(s => s).join('||'))()"""

CENTRE = """((selector, i) => { const el = document.querySelectorAll(selector)[i];
  el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();
  return [r.left + r.width / 2, r.top + r.height / 2]; })"""

# For every visible figure: the smallest text its PNG notes (viz.TEXT_NOTE, in the image's
# pixels) times the scale the page shows the image at: the text's size on screen.
TEXT_ON_SCREEN = """(async () => {
  const out = [];
  for (const img of document.querySelectorAll('article img')) {
    const r = img.getBoundingClientRect();
    if (!r.width || !img.naturalWidth) continue;
    const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    const text = new TextDecoder('latin1').decode(bytes.slice(0, 4096));
    const m = text.match(/odc_mini smallest text px ([0-9.]+)/);
    if (m) out.push([parseFloat(m[1]) * r.width / img.naturalWidth, img.naturalWidth, r.width]);
  }
  return out; })()"""


# Widget outputs that take room on the page but show nothing (a closed progress bar)
BLANK_WIDGETS = """Array.from(document.querySelectorAll('.widget-subarea'))
  .filter(a => a.getBoundingClientRect().height > 0 && a.firstElementChild
               && getComputedStyle(a.firstElementChild).visibility === 'hidden').length"""

# Boxes holding an image that are wider than they show, so that the page scrolls sideways under
# them (a figure or a widget wider than the text column): "tag.class: shown px < content px".
OVERFLOWING_FIGURES = """Array.from(document.querySelectorAll('article *'))
  .filter(e => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible'
               && e.querySelector('img'))
  .map(e => `${e.tagName.toLowerCase()}.${String(e.className).split(' ')[0]}: `
            + `${e.clientWidth} px < ${e.scrollWidth} px`)"""


@pytest.fixture(scope="module")
def reader(built_book):
    """Every page opened in a DevTools-driven Chromium: its uncaught exceptions, what moving
    each slider and pressing each play button did to the frame shown, and the on-screen size of
    the smallest text of every figure."""
    import browser
    if not browser.available():
        message = f"{browser.CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = _Server(built_book.html)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    shots = BOOK / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        with browser.Browser() as chrome:
            for page in PAGES:
                if not (built_book.html / f"{page}.html").is_file():
                    continue
                tab = chrome.page(f"{origin}/{page}.html", settle=6.0)
                found = {"sliders": [], "plays": []}
                handles = tab.evaluate("document.querySelectorAll('.noUi-handle').length")
                for i in range(handles):
                    before = tab.evaluate(VISIBLE_FRAMES)
                    tab.evaluate(f"document.querySelectorAll('.noUi-handle')[{i}].focus()")
                    tab.press("ArrowLeft")
                    tab.pump(1.5)
                    found["sliders"].append(before != tab.evaluate(VISIBLE_FRAMES))
                plays = tab.evaluate("document.querySelectorAll('.widget-play button:first-child').length")
                for i in range(plays):
                    before = tab.evaluate(VISIBLE_FRAMES)
                    x, y = tab.evaluate(f"{CENTRE}('.widget-play button:first-child', {i})")
                    tab.click(x, y)
                    tab.pump(2.5)
                    found["plays"].append(before != tab.evaluate(VISIBLE_FRAMES))
                found["text_px"] = tab.evaluate(TEXT_ON_SCREEN)
                found["blank_widgets"] = tab.evaluate(BLANK_WIDGETS)
                found["overflowing"] = tab.evaluate(OVERFLOWING_FIGURES)
                found["exceptions"] = list(tab.exceptions)
                (shots / f"{page}.reader.png").write_bytes(tab.screenshot())
                tab.close()
                results[page] = found
    finally:
        server.shutdown()
        server.server_close()
    return results


def reader_page(reader, page):
    if page not in reader:
        pytest.fail(f"{page}.html was not built")
    return reader[page]


@pytest.mark.parametrize("page", PAGES)
def test_no_uncaught_javascript_exceptions(reader, page):
    assert not reader_page(reader, page)["exceptions"], reader_page(reader, page)["exceptions"]


@pytest.mark.parametrize("page", PAGES)
def test_every_slider_and_play_button_changes_the_frame(reader, page):
    found = reader_page(reader, page)
    if not found["sliders"] and not found["plays"]:
        pytest.skip(f"{page} has no sliders")
    assert all(found["sliders"]), f"{page}: sliders that did not change the frame: {found['sliders']}"
    assert all(found["plays"]), f"{page}: play buttons that did not change the frame: {found['plays']}"


@pytest.mark.parametrize("page", PAGES)
def test_no_blank_bands_from_hidden_widgets(reader, page):
    assert reader_page(reader, page)["blank_widgets"] == 0


@pytest.mark.parametrize("page", PAGES)
def test_figures_and_widgets_fit_the_column(reader, page):
    assert not reader_page(reader, page)["overflowing"], reader_page(reader, page)["overflowing"]


@pytest.mark.parametrize("page", PAGES)
def test_figure_text_is_at_least_9_px_on_screen(reader, page):
    figures = reader_page(reader, page)["text_px"]
    if not figures:
        pytest.skip(f"{page} shows no figure")
    small = [f"{px:.1f} px (image {natural} px wide shown at {shown:.0f})"
             for px, natural, shown in figures if px < 9]
    assert not small, f"{page}: figures with text below 9 px on screen: {small}"
