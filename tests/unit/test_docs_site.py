"""The members' docs site (mkdocs.yml, docs/): `mkdocs build --strict` passes (no broken link, anchor or
API reference), the API pages are the SDK's docstrings rendered, and the built site needs no network:
no script or stylesheet from an http(s) URL, no CSS that imports one. `make docs-site` runs the same
build."""

from __future__ import annotations

import html
import inspect
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from strategy_sdk.strategy import Strategy

ROOT = Path(__file__).resolve().parents[2]
#: A cold build takes a few seconds here; the bound only stops a hung build from hanging the suite.
BUILD_TIMEOUT_S = 240
#: Objects the API pages must document (each heading's id is the object's dotted path).
DOCUMENTED = (
    "strategy_sdk.strategy.Strategy",
    "strategy_sdk.strategy.Strategy.submit_order",
    "strategy_sdk.strategy.Strategy.history",
    "strategy_sdk.models.Bar",
    "strategy_sdk.models.Quote",
    "strategy_sdk.models.Trade",
    "strategy_sdk.models.Fill",
    "strategy_sdk.models.OrderUpdate",
    "strategy_sdk.models.OrderResult",
    "strategy_sdk.models.CancelResult",
    "strategy_sdk.models.OpenOrder",
    "strategy_sdk.orders.Account",
    "strategy_sdk.testing.run_backtest",
    "strategy_sdk.testing.BacktestResult",
    "desk.data.loaders.load",
    "desk.data.loaders.BarData",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs-site") / "site"
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed in this environment: `make setup` (it is in pyproject's dev extra)")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _text(markup: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


class _Resources(HTMLParser):
    """Every script src and stylesheet href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and values.get("src"):
            self.urls.append(values["src"] or "")
        if tag == "link" and "stylesheet" in (values.get("rel") or "").split() and values.get("href"):
            self.urls.append(values["href"] or "")


def test_the_api_page_renders_submit_orders_docstring(site: Path) -> None:
    page = (site / "api" / "strategy.html").read_text(encoding="utf-8")
    anchor = 'id="strategy_sdk.strategy.Strategy.submit_order"'
    assert anchor in page
    section = _text(page.split(anchor, 1)[1].split('id="strategy_sdk.strategy.Strategy.buy"', 1)[0])
    doc = inspect.getdoc(Strategy.submit_order)
    assert doc, "Strategy.submit_order has no docstring"
    first = " ".join(doc.split("\n\n", 1)[0].replace("``", "").replace("`", "").split())
    assert first in section, f"submit_order's docstring ({first!r}) is not on the API page"
    for argument in (
        "symbol",
        "side",
        "qty",
        "notional",
        "limit_price",
        "stop_price",
        "time_in_force",
        "client_order_id",
        "extended_hours",
    ):
        assert argument in section, f"submit_order's signature lacks {argument} on the API page"


def test_the_api_pages_document_the_sdk(site: Path) -> None:
    pages = "".join(p.read_text(encoding="utf-8") for p in sorted((site / "api").glob("*.html")))
    missing = [name for name in DOCUMENTED if f'id="{name}"' not in pages]
    assert not missing, f"not in the API reference: {missing}"
    # the docstrings' Sphinx roles (:class:`Bar`) are dropped by docs/_hooks/roles.py
    assert not re.search(r":(class|meth|func|attr|mod):", _text(pages))


def test_every_guide_is_built(site: Path) -> None:
    for page in (
        "index",
        "members",
        "backtesting",
        "deploy",
        "troubleshooting",
        "architecture",
        "alpaca",
        "dashboard",
        "faults",
        "performance",
    ):
        assert (site / f"{page}.html").is_file(), page


def test_the_site_loads_nothing_from_the_network(site: Path) -> None:
    remote = re.compile(r"^(https?:)?//", re.IGNORECASE)
    found: list[str] = []
    pages = sorted(site.rglob("*.html"))
    assert pages
    for page in pages:
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        found += [f"{page.relative_to(site)}: {url}" for url in parser.urls if remote.match(url)]
    for sheet in sorted(site.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        found += [
            f"{sheet.relative_to(site)}: {m}"
            for m in re.findall(r"(?:@import|url\()\s*['\"]?(?:https?:)?//[^)'\"]*", text)
        ]
    assert not found, f"the built site needs the network for: {found}"
