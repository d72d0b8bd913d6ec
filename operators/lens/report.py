"""A one-file HTML report per model: top components with example images, labels, measures, and the audit."""

from __future__ import annotations

import base64
import html
from typing import Any


def render_report(model_id: str, components: list[dict[str, Any]],
                  examples: dict[tuple[str, int], list[tuple[str, bytes]]], audits: list[dict[str, Any]],
                  spurious: list[dict[str, Any]] | None = None, per_layer: int = 8) -> str:
    """`examples[(layer, unit)]` lists (sample id, PNG bytes of the image or its relevant crop) in rank order;
    `spurious` rows of the spurious_samples table (most tied first), each with its image bytes (or None)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lakelens lens: {esc(model_id)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{width:48px;height:48px;"
             "image-rendering:pixelated;margin-right:2px}.flag{color:#b00;font-weight:bold}</style></head><body>",
             f"<h1>Semantic lens: {esc(model_id)}</h1>", "<h2>Audit</h2>"]
    if audits:
        parts.append("<table id='audits'><tr><th>class</th><th>kind</th><th>concepts</th><th>relevance share</th>"
                     "<th>components</th><th>finding</th></tr>")
        for a in audits:
            css = " class='flag'" if a["flagged"] else ""
            parts.append(f"<tr{css}><td>{esc(a['class_name'])}</td><td>{esc(a['kind'])}</td>"
                         f"<td>{esc(', '.join(a['concepts']))}</td><td>{a['relevance_share']:.1%}</td>"
                         f"<td>{esc(', '.join(a['components']))}</td><td>{esc(a['finding'])}</td></tr>")
        parts.append("</table>")
    else:
        parts.append("<p>No audit configured.</p>")
    if spurious:
        parts.append("<h2>Samples tied to a flagged spurious concept</h2><p>Samples of each flagged class ranked by "
                     "the relevance its spurious components carry for the class (table <code>spurious_samples</code>)."
                     "</p><table id='spurious-samples'><tr><th>class</th><th>concepts</th><th>rank</th><th>sample</th>"
                     "<th>relevance</th><th>share</th><th>image</th></tr>")
        for r in spurious:
            image = (f"<img alt='{esc(r['sample_id'])}' src='data:image/png;base64,"
                     f"{base64.b64encode(r['image']).decode()}'>" if r.get("image") else "")
            parts.append(f"<tr><td>{esc(r['class_name'])}</td><td>{esc(', '.join(r['concepts']))}</td><td>{r['rank']}</td>"
                         f"<td>{esc(r['sample_id'])}</td><td>{r['relevance']:.4g}</td><td>{r['share']:.1%}</td>"
                         f"<td>{image}</td></tr>")
        parts.append("</table>")
    layers = sorted({c["layer"] for c in components})
    for layer in layers:
        mine = sorted((c for c in components if c["layer"] == layer), key=lambda c: -abs(c["relevance_mean"]))
        parts.append(f"<h2>Layer {esc(layer)}: the {min(per_layer, len(mine))} most relevant components</h2>")
        parts.append("<table class='components'><tr><th>unit</th><th>label</th><th>alignment</th><th>clarity</th>"
                     "<th>polysemanticity</th><th>redundancy</th><th>examples</th></tr>")
        for c in mine[:per_layer]:
            thumbs = "".join(
                f"<img alt='{esc(s)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                for s, png in examples.get((layer, c["unit"]), [])[:6])
            parts.append(f"<tr><td>{c['unit']}</td><td>{esc(c['label'])}</td><td>{c['label_score']:+.3f}</td>"
                         f"<td>{c['clarity']:.2f}</td><td>{c['polysemanticity']:.2f}</td><td>{c['redundancy']:.2f}</td>"
                         f"<td>{thumbs}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
