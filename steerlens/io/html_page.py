"""One look for every HTML page steerlens writes (reports, vector cards, token views): the
stylesheet, and the document around a page's body."""

from __future__ import annotations

import html

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.4}table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:4px 8px;vertical-align:top;text-align:left}th{background:#f4f4f4}td.num{text-align:right;
font-variant-numeric:tabular-nums}.failed{color:#b00}.note{color:#555}code{background:#f4f4f4;
padding:0 3px}details{margin:0.5em 0}summary{cursor:pointer}b.judged{color:#1a6b2a}
b.unjudged{color:#666}"""


def html_document(title: str, body: str) -> str:
    """``body`` (an HTML fragment) as a whole page titled ``title``, in the shared `STYLE`.

    Example:
        >>> page = html_document("a <title>", "<p>hi</p>")
        >>> page.startswith("<!doctype html>"), "<title>a &lt;title&gt;</title>" in page
        (True, True)
    """
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n"
    )
