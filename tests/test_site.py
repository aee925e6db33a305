"""The tutorial site: render the chapters, build with ``mkdocs --strict``, and check it in a real browser, offline.

Both tests share one build (a module-scoped fixture). The browser check needs Chromium at /usr/bin/chromium
(``apt-get install chromium``) and the playwright Python package; it uses no playwright-downloaded browser.
"""

import functools
import os
import re
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from quantref.cli import site_scripts
from quantref.render import chapter_scripts, render_chapter

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = [
    "index.html",
    "getting-started.html",
    "pitfalls.html",
    "conformance.html",
    "testing-your-backend.html",
    "benchmarks.html",
    "api.html",
]

# A tag that makes the browser fetch from another host: script/img/iframe/source src, or a link that is not just a
# canonical/alternate URL. Protocol-relative "//host" counts too.
REMOTE_FETCH = re.compile(
    r"<(?:script|img|iframe|source|audio|video)\b[^>]*\b(?:src|srcset)\s*=\s*[\"']?(?:https?:)?//"
    r"|<link\b(?![^>]*\brel=[\"']?(?:canonical|alternate)\b)[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//"
    r"|fonts\.googleapis|fonts\.gstatic",
    re.IGNORECASE,
)
REMOTE_CSS = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])(?:https?:)?//", re.IGNORECASE)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> tuple[Path, list[Path]]:
    """Render chapters/ into docs/chapters/ and docs/conformance.py into docs/, and build the site into a temporary
    directory, once per module. Returns the site and the chapter pages."""
    assert chapter_scripts(ROOT), "no chapter scripts in chapters/"
    rendered = [render_chapter(script, out_dir, echo=False) for script, out_dir in site_scripts(ROOT)]
    pages = [page for page in rendered if page.parent.name == "chapters"]
    site = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return site, pages


@pytest.mark.slow
def test_build_is_strict_and_offline(built_site):
    site, pages = built_site
    for page in pages:
        assert (site / "chapters" / f"{page.stem}.html").is_file()
    remote = [
        f"{path.relative_to(site)}: {match.group(0)}"
        for pattern, suffix in ((REMOTE_FETCH, ".html"), (REMOTE_CSS, ".css"))
        for path in sorted(site.rglob(f"*{suffix}"))
        for match in pattern.finditer(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not remote, "the built site fetches from the network:\n" + "\n".join(remote)
    html = (site / "pitfalls.html").read_text(encoding="utf-8")
    assert "<math" in html and 'class="arithmatex">\\(' not in html, "TeX left unconverted to MathML"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site_url(built_site):
    """Serve the built site on 127.0.0.1 at a free port."""
    handler = functools.partial(QuietHandler, directory=str(built_site[0]))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_pages_render_math_and_figures_offline(built_site, site_url):
    if not CHROMIUM.exists():
        pytest.skip(reason=f"no browser at {CHROMIUM}: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    _, pages = built_site
    chapter_urls = [f"{site_url}/chapters/{page.stem}.html" for page in pages]
    blocked: list[str] = []

    def only_local(route) -> None:
        url = urlparse(route.request.url)
        if url.scheme in ("data", "blob") or url.hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    visible_math = (
        "Array.from(document.querySelectorAll('math'))"
        ".filter(m => { const r = m.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length"
    )
    images = "Array.from(document.images).map(i => ({src: i.src, ok: i.complete && i.naturalWidth > 0}))"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_local)
            for url in chapter_urls + [f"{site_url}/{name}" for name in PAGES]:
                response = page.goto(url, wait_until="load")
                assert response is not None and response.ok, url
                if url in chapter_urls or url.endswith(("pitfalls.html", "conformance.html")):
                    assert page.evaluate(visible_math) >= 1, f"{url}: no rendered <math>"
                if url in chapter_urls:
                    shown = page.evaluate(images)
                    assert shown, f"{url}: no figures"
                    assert all(image["ok"] for image in shown), f"{url}: broken images {shown}"
        finally:
            browser.close()
    assert not blocked, f"pages tried to reach the network: {blocked}"
