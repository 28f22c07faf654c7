"""The course website (``make docs``): it builds offline, is the course's front door, and every
page reads right in a browser.

The site is built once per test session into a temporary folder, with the command ``make docs``
runs. The built HTML is checked for what a learner needs: the landing page's sections and figure,
a page for every notebook, every docs/*.md page and the two reproduction notebooks, and every
exercise's solution on its notebook's page behind a toggle. Then every page is opened in headless
Chromium: formulas typeset by MathJax, every image loaded, no console error, no request leaving
127.0.0.1, every internal link pointing at a built page and an anchor on it.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from browser import chromium, serve, skip_without_browser

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "notebooks"
NOTEBOOKS = sorted(COURSE.glob("[0-9][0-9]_*.ipynb")) + sorted(COURSE.glob("appendix_*.ipynb"))
REPRODUCE_PAGES = ["quickstart", "ablations"]
# What `make docs` runs (its Makefile rule), with the output in a temporary folder.
SPHINX_ARGS = ["-W", "--keep-going", "-b", "html", "-c", "docs", "."]
BUILD_TIMEOUT_S = 600


def public_modules() -> list[str]:
    """densflow's modules and subpackages (a subpackage's page is its public interface)."""
    package = ROOT / "densflow"
    names = [p.stem for p in package.glob("*.py")]
    names += [p.parent.name for p in package.glob("*/__init__.py")]
    return sorted(f"densflow.{name}" for name in names if not name.startswith("_"))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("sphinx", reason="the docs extra is missing: `pip install -e '.[docs]'`")
    pytest.importorskip("myst_nb", reason="the docs extra is missing: `pip install -e '.[docs]'`")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            *SPHINX_ARGS,
            str(out / "html"),
            "-d",
            str(out / "doctrees"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert run.returncode == 0, f"the site does not build:\n{run.stderr[-6000:]}"
    print(f"site built in {time.perf_counter() - start:.0f} s")
    return out / "html"


def pages(site: Path) -> list[Path]:
    return sorted(
        p
        for p in site.rglob("*.html")
        if p.relative_to(site).parts[0] not in ("_static", "_sources")
    )


@pytest.mark.slow
def test_the_site_has_a_page_for_every_notebook_doc_and_module(site):
    for nb in NOTEBOOKS:
        assert (site / "notebooks" / f"{nb.stem}.html").is_file(), f"no page for {nb.name}"
    for md in (ROOT / "docs").glob("*.md"):
        assert (site / "docs" / f"{md.stem}.html").is_file(), f"no page for docs/{md.name}"
    for name in REPRODUCE_PAGES:
        page = site / "reproduce" / f"{name}.html"
        assert page.is_file(), f"no page for reproduce/{name}.ipynb"
        assert "cell_output" in page.read_text(), f"reproduce/{name}: no committed output shown"
    for module in public_modules():
        assert (site / "docs" / "api" / f"{module}.html").is_file(), (
            f"no API page for {module}: add it to the list in docs/api.md"
        )
    # The landing page forwards to the course's index.
    assert 'url=docs/index.html"' in (site / "index.html").read_text()


def text_of(html_text: str) -> str:
    """The words of an HTML fragment: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", html_text)).split())


def details_texts(page: str) -> list[str]:
    """The text inside each ``<details>`` element (a toggle) of a page."""
    return [text_of(m) for m in re.findall(r"<details\b.*?</details>", page, flags=re.DOTALL)]


def solution_problems(
    page: str, notebook: Path, solutions: Path = COURSE / "solutions"
) -> list[str]:
    """The notebook's solution files whose text is not inside a toggle of its page (probed by the
    last code line of a solution, the first run of plain words of a worked answer)."""
    problems = []
    toggles = details_texts(page)
    for name in sorted(set(re.findall(r"solutions/(\w+\.(?:py|md))", notebook.read_text()))):
        body = (solutions / name).read_text(encoding="utf-8")
        lines = [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
        if name.endswith(".py"):
            probe = " ".join(lines[-1].split())
        else:  # a run of plain words: markdown and formulas render differently in HTML
            probe = re.search(r"[A-Za-z][A-Za-z ,;'-]{24,}", body)[0].strip(" ,;")
        if not any(probe in toggle for toggle in toggles):
            problems.append(f"{name}: {probe!r} is not inside a toggle of the page")
    return problems


def test_the_toggle_checker_finds_a_solution_outside_a_toggle(tmp_path):
    (tmp_path / "01_x.py").write_text("# Solution\ndef double(x):\n    return 2 * x\n")
    (tmp_path / "01_x.md").write_text("**(i)** Twice $x$, always and in every single case.\n")
    notebook = tmp_path / "01_n.ipynb"
    notebook.write_text('"%run -i solutions/01_x.py", "[answer](solutions/01_x.md)"')
    code = "<pre><span>def</span> double(x): <span>return</span> 2 <span>*</span> x</pre>"
    math = '<span class="math">\\(x\\)</span>'
    answer = f"<p><strong>(i)</strong> Twice {math}, always and in every single case.</p>"
    hidden = f"<details><summary>Show</summary>{code}</details><details>{answer}</details>"
    assert details_texts("<details>a <b>b</b></details><p>c</p>") == ["a b"]
    assert solution_problems(hidden, notebook, tmp_path) == []
    shown = f"<details><summary>Show</summary></details>{code}{answer}"
    assert [p.split(":")[0] for p in solution_problems(shown, notebook, tmp_path)] == [
        "01_x.md",
        "01_x.py",
    ]


@pytest.mark.slow
def test_every_solution_is_on_its_notebook_page_behind_a_toggle(site):
    for notebook in NOTEBOOKS:
        page = (site / "notebooks" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert solution_problems(page, notebook) == [], notebook.name
        assert "%run -i solutions/" not in page, (
            f"{notebook.name}: the %run line is shown, not the solution"
        )


@pytest.mark.slow
def test_the_landing_page_is_the_course_front_door(site):
    page = (site / "docs" / "index.html").read_text(encoding="utf-8")
    for section in (
        "what-you-will-be-able-to-do",
        "prerequisites",
        "the-course-map",
        "run-it-locally",
    ):
        assert f'id="{section}"' in page, f"the landing page has no section #{section}"
    figure = re.search(r'<img[^>]+src="([^"]*course-fig3\.png)"', page)
    assert figure and (site / "docs" / figure[1]).resolve().is_file(), (
        "the landing figure is missing"
    )
    course_map = page[page.index('id="the-course-map"') :]
    for notebook in NOTEBOOKS:  # a row with a link and a learner's time for every notebook
        row = re.search(
            rf"<tr[^>]*>(?:(?!</tr>).)*{notebook.stem}\.html(?:(?!</tr>).)*</tr>", course_map, re.S
        )
        assert row and re.search(r"\b\d+ (?:h|min)\b", text_of(row[0])), (
            f"no map row for {notebook.name}"
        )
    navigation = set(re.findall(r'href="([^"#]+)\.html', page))
    for md in (ROOT / "docs").glob("*.md"):
        if md.stem != "index":
            assert md.stem in navigation, f"docs/{md.name} is not in the site's table of contents"
    for name in REPRODUCE_PAGES:
        assert f"../reproduce/{name}" in navigation, (
            f"reproduce/{name} is not in the Reproduce section"
        )


@pytest.mark.slow
def test_mathjax_is_served_from_the_site(site):
    script = site / "_static" / "mathjax" / "tex-chtml.js"
    assert script.is_file() and script.stat().st_size > 100_000
    page = (site / "notebooks" / f"{NOTEBOOKS[0].stem}.html").read_text()
    sources = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert any(s.endswith("_static/mathjax/tex-chtml.js") for s in sources), sources
    assert not [s for s in sources if "://" in s], f"scripts from the network: {sources}"


# What one page looks like in the browser, gathered once for all the checks below.
@dataclass
class Visit:
    url: str
    console_errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    images: int = 0
    output_images: int = 0
    broken_images: list[str] = field(default_factory=list)
    math: int = 0
    typeset: int = 0
    math_errors: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    inspected: bool = False


# Runs in the page after load: waits for MathJax and for every image, then reports.
INSPECT_JS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await document.fonts.ready;  // MathJax's and the theme's web fonts
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const math = Array.from(document.querySelectorAll('.math'));
  const main = document.querySelector('main') || document.body;
  const prose = main.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, mjx-container, .highlight, textarea')
       .forEach(n => n.remove());
  return {
    images: imgs.length,
    outputImages: document.querySelectorAll('.cell_output img').length,
    brokenImages: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    math: math.length,
    typeset: math.filter(m => m.querySelector('mjx-container')).length,
    // Each TeX error with the formula it is in.
    mathErrors: window.MathJax && MathJax.startup && MathJax.startup.document
      ? Array.from(MathJax.startup.document.math)
          .filter(m => m.typesetRoot && m.typesetRoot.querySelector('mjx-merror'))
          .map(m => {
            const e = m.typesetRoot.querySelector('mjx-merror');
            const error = e.getAttribute('data-mjx-error') || e.textContent;
            return `${error} in: ${m.math.slice(0, 160)}`;
          })
      : [],
    text: prose.textContent,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  };
}
"""
# Pandoc's rule for inline math: no space inside either dollar, no digit right after the closing
# one (so "$5 and $6" is money).
RAW_TEX = re.compile(r"\$\$|\\\(|\\\[|\\begin\{|(?<![\w$])\$[^\s$][^$\n]{0,80}(?<!\s)\$(?!\d)")


@pytest.fixture(scope="module")
def visits(site) -> dict[str, Visit]:
    skip_without_browser()
    result: dict[str, Visit] = {}
    with serve(site) as base, chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})

        def only_local(route):
            if route.request.url.startswith(base):
                route.continue_()
            else:
                current.outside_requests.append(route.request.url)
                route.abort()

        context.route("**/*", only_local)
        page = context.new_page()
        page.on(
            "console",
            lambda m: (
                m.type == "error" and current.console_errors.append(f"{m.text} ({m.location})")
            ),
        )
        page.on("pageerror", lambda e: current.console_errors.append(f"uncaught: {e}"))
        page.on(
            "requestfailed",
            # Leaving a page aborts what it still loads; only failures before that count.
            lambda r: (
                not current.inspected and current.failed_requests.append(f"{r.url}: {r.failure}")
            ),
        )
        page.on(
            "response",
            lambda r: r.status >= 400 and current.failed_requests.append(f"{r.url}: {r.status}"),
        )
        for path in pages(site):
            name = path.relative_to(site).as_posix()
            current = result[name] = Visit(url=base + name)
            response = page.goto(current.url, wait_until="load")
            assert response is not None and response.ok, f"{name}: {response and response.status}"
            if name == "index.html":  # the root forwards to the course's index
                page.wait_for_url(base + "docs/index.html")
                page.wait_for_load_state("load")
            report = page.evaluate(INSPECT_JS)
            current.images = report["images"]
            current.output_images = report["outputImages"]
            current.broken_images = report["brokenImages"]
            current.math, current.typeset = report["math"], report["typeset"]
            current.math_errors = report["mathErrors"]
            current.raw_tex = sorted(set(RAW_TEX.findall(report["text"])))
            current.links = report["links"]
            current.inspected = True
            page.goto("about:blank")  # its aborted loads are still this page's, and ignored
        context.close()
    return result


def problems(visits: dict[str, Visit], attribute: str) -> dict[str, list]:
    return {name: getattr(v, attribute) for name, v in visits.items() if getattr(v, attribute)}


@pytest.mark.browser
def test_no_page_logs_an_error(visits):
    assert not problems(visits, "console_errors")
    assert not problems(visits, "failed_requests")


@pytest.mark.browser
def test_no_page_asks_the_network(visits):
    assert not problems(visits, "outside_requests"), "the site must work offline"


@pytest.mark.browser
def test_every_image_loads(visits):
    assert not problems(visits, "broken_images")
    # Every figure of every notebook is on its page: the committed outputs, not re-executed ones.
    for nb in NOTEBOOKS:
        cells = json.loads(nb.read_text())["cells"]
        figures = sum(
            "image/png" in out.get("data", {}) for c in cells for out in c.get("outputs", [])
        )
        visit = visits[f"notebooks/{nb.stem}.html"]
        assert visit.output_images == figures, (nb.name, visit.output_images, figures)


@pytest.mark.browser
def test_math_is_typeset(visits):
    untypeset = {n: (v.typeset, v.math) for n, v in visits.items() if v.typeset != v.math}
    assert not untypeset, f"formulas MathJax left as TeX (typeset, all): {untypeset}"
    assert not problems(visits, "math_errors")
    assert not problems(visits, "raw_tex"), "TeX left in the text, outside any formula"
    for nb in NOTEBOOKS:
        if "$" in "".join(
            "".join(c["source"])
            for c in json.loads(nb.read_text())["cells"]
            if c["cell_type"] == "markdown"
        ):
            assert visits[f"notebooks/{nb.stem}.html"].typeset > 0, f"{nb.name}: no formula typeset"


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs) -> None:
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)


def broken_links(site: Path, base: str, links: dict[str, list[str]]) -> tuple[int, list[str]]:
    """Of each page's absolute hrefs, those under ``base`` whose file or anchor is not in ``site``;
    returns (links checked, broken ones)."""
    anchors: dict[Path, set[str]] = {}
    broken, checked = [], 0
    for name, hrefs in links.items():
        for href in hrefs:
            if not href.startswith(base):
                continue  # external (arXiv, GitHub): not followed, the site must not need them
            parts = urlsplit(href)
            target = site / unquote(parts.path[len(urlsplit(base).path) :])
            if target.is_dir():
                target = target / "index.html"
            checked += 1
            if not target.is_file():
                broken.append(f"{name} -> {href} (no such file)")
                continue
            if parts.fragment and target.suffix == ".html":
                if target not in anchors:
                    parser = _Anchors()
                    parser.feed(target.read_text(encoding="utf-8"))
                    anchors[target] = parser.ids
                if unquote(parts.fragment) not in anchors[target]:
                    broken.append(f"{name} -> {href} (no anchor #{parts.fragment})")
    return checked, broken


def test_the_link_checker_finds_a_missing_page_and_a_missing_anchor(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.html").write_text('<h1 id="top">x</h1><a name="old">y</a>')
    base = "http://127.0.0.1:1/"
    good = [
        f"{base}docs/index.html#top",
        f"{base}docs/index.html#old",
        f"{base}docs/",
        "https://x.org/",
    ]
    assert broken_links(tmp_path, base, {"a.html": good}) == (3, [])
    bad = [f"{base}docs/index.html#gone", f"{base}docs/missing.html"]
    checked, broken = broken_links(tmp_path, base, {"a.html": bad})
    assert checked == 2 and "no anchor #gone" in broken[0] and "no such file" in broken[1]


@pytest.mark.parametrize(
    "text, raw",
    [
        ("the bound $$\\ln p(x)$$ holds", True),
        ("a formula \\(x^2\\) left as TeX", True),
        ("\\begin{align} a \\end{align}", True),
        ("so $\\ln|\\det| = 0$.", True),
        ("costs $5 and then $6", False),
        ("plain prose, with eq. (5) typeset elsewhere", False),
    ],
)
def test_raw_tex_is_recognised(text, raw):
    assert bool(RAW_TEX.search(text)) == raw


@pytest.mark.browser
def test_every_internal_link_resolves(site, visits):
    base = "/".join(next(iter(visits.values())).url.split("/")[:3]) + "/"
    checked, broken = broken_links(site, base, {n: v.links for n, v in visits.items()})
    assert checked > 100, f"only {checked} internal links: the pages were not inspected"
    assert not broken, "\n".join(broken)
