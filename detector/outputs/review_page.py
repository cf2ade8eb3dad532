"""The moderators' review page of ``copyscan serve``: recent flagged checks, each upload beside
the catalog image it matched with the region stage 3 found outlined on both, and buttons to
confirm or dismiss. A decision is POSTed to ``/v1/checks/{id}/decision`` and stored, with
the session's CSRF token (read from a ``<meta>`` tag, since the script is static and hashed)
in ``X-CSRF-Token``. The sign-in page takes the admin token in a plain form.

Every text is HTML-escaped; the one inline script and style are allowed by their sha256 in
the Content-Security-Policy the server sends with the page, which also forbids anything from
elsewhere (images and requests go to the same server only)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from html import escape
from typing import Any

from detector.outputs.links import web_link
from detector.storage.checks import CheckRecord

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;background:#f6f6f4;color:#222}
h1{font-size:20px;margin:0 0 4px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0;
display:flex;gap:16px;align-items:flex-start}
.card[data-decision=confirmed]{border-color:#b00020}
.card[data-decision=dismissed]{opacity:.55}
figure{margin:0;text-align:center;font-size:12px;color:#666}
.thumb{position:relative;display:inline-block;line-height:0}
.thumb img{max-width:300px;max-height:300px;min-width:60px;min-height:60px}
.thumb svg{position:absolute;inset:0;width:100%;height:100%}
.thumb polygon{fill:none;stroke:#e00;stroke-width:2;vector-effect:non-scaling-stroke}
.thumb polygon.disagree{fill:rgba(30,90,255,.18);stroke:#1d4ed8;stroke-dasharray:4 3;stroke-width:1.5}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0}
dt{color:#777}dd{margin:0;word-break:break-all}
.copy{color:#b00020;font-weight:600}.near-duplicate{color:#b36b00;font-weight:600}
button{margin:8px 6px 0 0;padding:4px 12px;cursor:pointer}
.decision{font-weight:600}
header{display:flex;justify-content:space-between;align-items:baseline}
form{background:#fff;border:1px solid #ddd;border-radius:6px;padding:16px;max-width:420px}
input[type=password]{width:100%;box-sizing:border-box;padding:6px;margin:6px 0 10px}
.error{color:#b00020}
"""

_SCRIPT = """
var csrf = document.querySelector('meta[name=csrf-token]').content;
function post(url, body) {
  return fetch(url, {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify(body)});
}
var signout = document.getElementById('signout');
if (signout) {
  signout.addEventListener('click', function () {
    post('/review/signout', {}).then(function () { location.assign('/review/signin'); });
  });
}
document.querySelectorAll('button[data-decision]').forEach(function (b) {
  b.addEventListener('click', function () {
    var card = b.closest('.card');
    post('/v1/checks/' + card.dataset.check + '/decision', {decision: b.dataset.decision})
    .then(function (r) { return r.json(); }).then(function (c) {
      if (c.decision) {
        card.dataset.decision = c.decision;
        card.querySelector('.decision').textContent = c.decision + ' at ' + c.decided_at;
      } else {
        card.querySelector('.decision').textContent = 'not stored: ' + (c.error || 'error');
      }
    });
  });
});
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = (
    f"default-src 'none'; img-src 'self'; style-src {_hash(_STYLE)}; script-src {_hash(_SCRIPT)}; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SIGNIN_CSP = (
    f"default-src 'none'; style-src {_hash(_STYLE)}; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_HEAD = (
    "<!doctype html><html lang=en><head><meta charset=utf-8>"
    "<meta name=viewport content='width=device-width,initial-scale=1'>"
)


def render_review(checks: Sequence[CheckRecord], csrf: str = "", signed_in: bool = False) -> tuple[str, str]:
    """The page for these checks (newest first) and the Content-Security-Policy to send.
    ``csrf``: the session's CSRF token, sent back with each decision; ``signed_in``: show the
    sign-out button (not when the server runs without authentication)."""
    cards = "\n".join(_card(c) for c in checks) or '<p id="none">No flagged checks yet.</p>'
    signout = '<button id="signout" type="button">Sign out</button>' if signed_in else ""
    page = (
        f'{_HEAD}<meta name="csrf-token" content="{escape(csrf)}">'
        f"<title>copyscan review</title><style>{_STYLE}</style></head><body>"
        f"<header><h1>copyscan review</h1>{signout}</header>"
        f"<p>{len(checks)} recent flagged checks, newest first.</p>"
        f'<main id="checks">{cards}</main><script>{_SCRIPT}</script></body></html>'
    )
    return page, CSP


def render_signin(problem: str = "") -> tuple[str, str]:
    """The sign-in page (a form POSTing the admin token to ``/review/signin``), with
    ``problem`` shown when the last try failed, and its Content-Security-Policy."""
    shown = f'<p class="error" id="problem">{escape(problem)}</p>' if problem else ""
    page = (
        f"{_HEAD}<title>copyscan review: sign in</title><style>{_STYLE}</style></head><body>"
        f"<h1>copyscan review</h1>{shown}"
        '<form method="post" action="/review/signin"><label for="token">Admin token</label>'
        '<input type="password" id="token" name="token" autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form>'
        "<p>The token was shown when the server first started; "
        "<code>copyscan token rotate --scope admin</code> makes a new one.</p></body></html>"
    )
    return page, SIGNIN_CSP


def _card(c: CheckRecord) -> str:
    matches: list[dict[str, Any]] = [m for m in c.result.get("matches", []) if isinstance(m, dict)]
    best = matches[0] if matches else {}
    catalog_id = best.get("catalog_id")
    disagreement = best.get("disagreement")
    query = _figure(
        f"/review/thumbs/check/{c.id}.jpg",
        best.get("query_region"),
        "upload",
        disagreement if isinstance(disagreement, list) else [],
    )
    original = (
        _figure(f"/review/thumbs/match/{c.id}.jpg", best.get("catalog_region"), "catalog")
        if isinstance(catalog_id, int)
        else ""
    )
    verdict = escape(str(best.get("verdict", "")))
    facts = [
        ("verdict", f'<span class="{verdict}">{verdict}</span>'),
        ("score", escape(_num(best.get("score")))),
        ("upload", escape(c.name or "(no name)")),
        *_said(c.meta),
        ("checked", escape(c.checked_at)),
        ("catalog", escape(str(best.get("catalog_path", "")))),
        ("owner", escape(str(best.get("owner") or "—"))),
        ("external id", escape(str(best.get("external_id") or "—"))),
        ("inliers", escape(str(best.get("inliers", "—")))),
        ("agreement", escape(_share(best.get("agreement")))),
        ("other matches", escape(str(max(len(matches) - 1, 0)))),
    ]
    decided = f"{c.decision} at {c.decided_at}" if c.decision else "pending"
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f'<section class="card" data-check="{c.id}" data-decision="{escape(c.decision or "")}" '
        f'data-verdict="{escape(c.verdict)}">{query}{original}<div><dl>{rows}</dl>'
        f'<p>decision: <span class="decision">{escape(decided)}</span></p>'
        '<button data-decision="confirmed">Confirm copy</button>'
        '<button data-decision="dismissed">Dismiss</button></div></section>'
    )


def _said(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """What the client said of the upload: who uploaded it, for which listing, from where."""
    facts = []
    for label, key in (("uploader", "uploader"), ("listing", "listing_id")):
        if meta.get(key):
            facts.append((label, escape(str(meta[key]))))
    for label, key in (("page", "page_url"), ("image URL", "url")):
        value = meta.get(key)
        if isinstance(value, str) and value:
            facts.append((label, web_link(value)))
    return facts


def _figure(src: str, region: object, caption: str, disagreement: list[object] | None = None) -> str:
    """A thumbnail with the matched region outlined, and dashed where it disagrees with the
    other image."""
    shapes = []
    points = _points(region)
    if points:
        shapes.append(f'<polygon points="{points}"/>')
    for area in disagreement or []:
        found = _points(area)
        if found:
            shapes.append(f'<polygon class="disagree" points="{found}"/>')
    outline = ""
    if shapes:
        outline = (
            '<svg viewBox="0 0 1 1" preserveAspectRatio="none" aria-hidden="true">'
            + "".join(shapes)
            + "</svg>"
        )
    return (
        f'<figure><div class="thumb"><img src="{escape(src)}" alt="{escape(caption)}">{outline}</div>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _points(region: object) -> str:
    """SVG points from a stored region, or '' for anything that is not a list of pairs."""
    if not isinstance(region, list) or len(region) < 3:
        return ""
    out = []
    for p in region:
        if not (isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(v, int | float) for v in p)):
            return ""
        out.append(f"{min(max(float(p[0]), 0.0), 1.0):.4f},{min(max(float(p[1]), 0.0), 1.0):.4f}")
    return " ".join(out)


def _share(value: object) -> str:
    return f"{value:.0%} of the overlap agrees" if isinstance(value, int | float) else "—"


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"
