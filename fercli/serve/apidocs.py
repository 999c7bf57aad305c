"""The API reference page of `fer serve` (GET /docs): the app's OpenAPI schema rendered as one
HTML page on the server, with no script and nothing from elsewhere, so that it opens on a
machine without internet (FastAPI's own Swagger page loads its script from a CDN).

Per operation: method, path, summary, description, query/path/header parameters, the request
body's media types and the responses. Every text from the schema is HTML-escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

_METHODS = ("get", "post", "put", "patch", "delete")


def _schema_type(schema: dict[str, Any] | None) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type", "")
    return f"array of {_schema_type(schema.get('items'))}" if kind == "array" else str(kind)


def _parameters(params: list[dict[str, Any]]) -> str:
    if not params:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape(p.get('name', ''))}</code></td><td>{escape(p.get('in', ''))}</td>"
        f"<td>{escape(_schema_type(p.get('schema')))}</td><td>{'yes' if p.get('required') else 'no'}</td>"
        f"<td>{escape(p.get('description', ''))}</td></tr>" for p in params)
    return ("<table><tr><th>parameter</th><th>in</th><th>type</th><th>required</th><th>description</th></tr>"
            f"{rows}</table>")


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [f'<section class="op" id="{escape(method)}-{escape(path.strip("/").replace("/", "-"))}">',
             f"<h2><span class=\"method\">{escape(method.upper())}</span> <code>{escape(path)}</code></h2>"]
    if op.get("summary"):
        parts.append(f"<p><strong>{escape(op['summary'])}</strong></p>")
    if op.get("description"):
        parts.append(f"<pre>{escape(op['description'])}</pre>")
    parts.append(_parameters(op.get("parameters") or []))
    body = (op.get("requestBody") or {}).get("content") or {}
    if body:
        parts.append("<p>Request body: " + ", ".join(f"<code>{escape(m)}</code>" for m in body) + "</p>")
    responses = op.get("responses") or {}
    if responses:
        parts.append("<p>Responses: " + ", ".join(
            f"<code>{escape(str(code))}</code> {escape(r.get('description', ''))}" for code, r in responses.items())
            + "</p>")
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def render_api_docs(schema: dict[str, Any]) -> str:
    """The whole page for an OpenAPI schema (dict, as FastAPI.openapi() returns it)."""
    info = schema.get("info") or {}
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    ops = [_operation(path, m, item[m]) for path, item in (schema.get("paths") or {}).items()
           for m in _METHODS if m in item]
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}: API</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body class="apidocs">
<main>
<h1>{escape(title)}</h1>
<p>{escape(info.get('description', ''))}</p>
<p>The machine-readable schema: <a href="/openapi.json">/openapi.json</a>. The page for people: <a href="/">/</a>.</p>
{chr(10).join(ops)}
</main>
</body>
</html>
"""
