"""The self-contained HTML report: one jinja2 template, figures embedded as base64 PNG, no network.

Layer: report (docs/architecture.md). May import: every layer below it (tasks included) and the other report modules.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import markupsafe

from endofm.report.tables import Table, to_html

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>endofm report</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.banner { background: #fff3cd; border: 2px solid #d39e00; padding: 0.8em 1em; font-size: 1.1em; margin: 1em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { padding: 0.25em 0.6em; text-align: right; white-space: nowrap; vertical-align: top; }
th.label { text-align: left; } tbody th { font-weight: normal; }
thead th { border-top: 2px solid #333; border-bottom: 1px solid #333; vertical-align: bottom; }
tbody:last-of-type tr:last-child > * { border-bottom: 2px solid #333; }
tr.block th { text-align: left; font-style: italic; font-weight: normal; background: #f3f3f3; }
.sub { display: block; color: #666; font-size: 0.9em; font-weight: normal; }
.caption { font-size: 0.85em; color: #555; max-width: 1100px; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0; } figure img { max-width: 100%; box-sizing: border-box; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; font-size: 0.9em; }
dt { font-weight: bold; } dd { margin: 0; font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
nav a { margin-right: 1em; }
@page { size: A4; margin: 12mm; }
@media print {
  body { max-width: none; margin: 0; padding: 0; font-size: 9pt; }
  nav { display: none; }
  h2 { margin-top: 1.2em; } h2, h3 { break-after: avoid; }
  .banner, tr.block th { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
  .scroll { overflow: visible; }
  table { font-size: 7.5pt; }
  th, td { white-space: normal; padding: 0.15em 0.4em; }
  tr, figure, dl > * { break-inside: avoid; }
  .caption { max-width: none; }
}
</style></head>
<body>
<h1>endofm report</h1>
<p>{{ summary }}</p>
{% if synthetic %}<div class="banner" id="synthetic-banner"><strong>Built-in synthetic corpus.</strong>
Synthetic results prove the machinery, not clinical accuracy: these numbers say nothing about endoscopy,
and the paper's figures beside them are its real-data results, not targets.</div>{% endif %}
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in sections %}
<h2 id="{{ s.id }}">{{ s.title }}</h2>
{% if s.text %}<p>{{ s.text }}</p>{% endif %}
{% for t in s.tables %}<h3>{{ t.title }}</h3><div class="scroll">{{ t.html }}</div>{% endfor %}
{% for f in s.figures %}<figure><img alt="{{ f.title }}" src="data:image/png;base64,{{ f.data }}">
<figcaption>{{ f.title }}</figcaption></figure>{% endfor %}
{% if s.pairs %}<dl>{% for k, v in s.pairs %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>{% endif %}
{% endfor %}
</body></html>
"""


def section(
    id: str,
    title: str,
    tables: Sequence[Table] = (),
    figures: Mapping[str, bytes] | None = None,
    items: Sequence[tuple[str, str]] = (),
    text: str = "",
) -> dict[str, Any]:
    """One report section: tables, figures (title -> PNG bytes) and key/value items."""
    return {
        "id": id,
        "title": title,
        "text": text,
        "tables": [{"title": t.title, "html": markupsafe.Markup(to_html(t))} for t in tables],
        "figures": [{"title": k, "data": base64.b64encode(v).decode()} for k, v in (figures or {}).items()],
        "pairs": list(items),
    }


def render(sections: Sequence[Mapping[str, Any]], *, synthetic: bool, summary: str) -> str:
    """The page; sections with nothing in them (no runs drew an example, say) are left out."""
    sections = [s for s in sections if s["text"] or s["tables"] or s["figures"] or s["pairs"]]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(sections=sections, synthetic=synthetic, summary=summary)
