"""mkdocs hook: the SDK's docstrings are written for Sphinx (:class:`Bar`, :meth:`~strategy_sdk.Strategy.buy`,
``Example::`` before a code block), which mkdocstrings renders literally. Keep the code, drop the role's
name, shorten a ``~`` target to its last part as Sphinx does, and end an ``Example::`` paragraph with one
colon."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj):<code>(~?)([^<]*)</code>")
_LITERAL_MARKER = re.compile(r"(?<=\S)::</p>")


def _role(match: re.Match[str]) -> str:
    target = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{target}</code>"


def on_page_content(html: str, **_kwargs: Any) -> str:
    return _LITERAL_MARKER.sub(":</p>", _ROLE.sub(_role, html))
