"""``GET /docs``: the OpenAPI document as one plain HTML page (no scripts, no CDN)."""

from __future__ import annotations

import html
from typing import Any


def docs_page(spec: dict[str, Any]) -> str:
    """A plain HTML listing of the document: paths, methods, parameters, answers, auth."""
    e = html.escape
    rows: list[str] = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            params = ", ".join(
                f"{e(p['name'])} ({e(p['in'])}{', required' if p.get('required') else ''})"
                for p in op.get("parameters", [])
            )
            auth = "; ".join(
                " or ".join(f"{k}{' ' + ','.join(v) if v else ''}" for k, v in s.items()) or "none"
                for s in op.get("security", [{}])
            )
            answers = ", ".join(
                f"{e(code)} {e(r.get('description', ''))}" for code, r in op["responses"].items()
            )
            rows.append(
                f"<tr><td><code>{e(method.upper())}</code></td><td><code>{e(path)}</code></td>"
                f"<td>{e(op.get('summary', ''))}</td><td>{params}</td><td>{e(auth)}</td>"
                f"<td>{answers}</td></tr>"
            )
    title = e(f"{spec['info']['title']} {spec['info']['version']}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title} API</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        "</style></head><body>"
        f"<h1>{title} API</h1><p>The full description: <a href='openapi.json'>openapi.json"
        "</a> (OpenAPI 3.1).</p><table><tr><th>method</th><th>path</th><th>summary</th>"
        f"<th>parameters</th><th>auth</th><th>answers</th></tr>{''.join(rows)}</table>"
        "</body></html>"
    )
