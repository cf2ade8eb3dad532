"""Links to where a copy was found, for the HTML pages (the report, the review page)."""

from __future__ import annotations

from html import escape

from detector.outputs.records import display

WEB_SCHEMES = ("http://", "https://")  # the only addresses a page links to


def web_link(url: str, css_class: str = "") -> str:
    """``url`` as a link opened in a new tab that sends no referrer and lends no ranking, when
    it is a web address; anything else (``javascript:``, ``data:``, ``file:``, a path) as
    escaped text."""
    shown = escape(display(url), quote=True)
    cls = f' class="{escape(css_class, quote=True)}"' if css_class else ""
    if not url.lower().startswith(WEB_SCHEMES):
        return f"<span{cls}>{shown}</span>"
    return f'<a{cls} href="{shown}" rel="noopener noreferrer nofollow" target="_blank">{shown}</a>'
