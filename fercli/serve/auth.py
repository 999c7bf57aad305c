"""API keys and the cap on requests in flight, in front of the app of `fer serve`.

Keys come from three places, all merged: `--api-key KEY` (repeatable), the environment
variable FER_API_KEY (several keys comma-separated) and `--api-key-file PATH` (one key a
line; blank lines and lines starting with `#` are skipped). A key is at least 16 visible
ASCII characters with no space or comma. No message here ever contains a key: a bad one is
named by where it came from (flag, variable or file line).

`Guard` is a pure ASGI middleware. With keys set, every path except the open ones (the page,
its /static files, /healthz, /readyz, /docs, /openapi.json) needs `Authorization: Bearer KEY`:
the scheme's case is ignored (RFC 7235), exactly one space separates it from the key, and the
key must match one of the keys whole (SHA-256 digests compared with hmac.compare_digest
against every key, so neither the time nor the answer depends on which key or how much of it
matched). Anything else is 401 with `WWW-Authenticate: Bearer`. Then, with a cap,
POST /v1/predict beyond `max_concurrent` requests in flight is 503 with `Retry-After: 1`.
Both answers are one-line JSON {"error": ...}, sent before the request body is read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from fercli.errors import FerError

ENV_VAR = "FER_API_KEY"
MIN_KEY_CHARS = 16
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json"})
OPEN_PREFIXES = ("/static/",)
LIMITED_PATHS = frozenset({"/v1/predict"})
HOW_TO_SET = ("give an API key with --api-key, FER_API_KEY or --api-key-file, or pass --no-auth "
              "to serve without one on purpose")


# --------------------------------------------------------------------------- the keys


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key (without quoting it), or None."""
    if len(key) < MIN_KEY_CHARS:
        return (f"is shorter than {MIN_KEY_CHARS} characters "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)")
    if not all("!" <= c <= "~" and c != "," for c in key):
        return "holds a character other than visible ASCII (no spaces, commas or control characters)"
    return None


def _checked(key: str, where: str) -> str:
    problem = key_problem(key)
    if problem:
        raise FerError(f"the API key from {where} {problem}")
    return key


def read_key_file(path: str | Path) -> list[str]:
    """The keys of a key file: one a line, blank lines and `#` comment lines skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FerError(f"--api-key-file {path}: not UTF-8 text") from None
    except OSError as exc:
        raise FerError(f"--api-key-file {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(_checked(line, f"--api-key-file {path} line {n}"))
    if not keys:
        raise FerError(f"--api-key-file {path} holds no key (one a line; # starts a comment line)")
    return keys


def gather_api_keys(flags: Iterable[str] = (), env: str | None = None,
                    key_file: str | Path | None = None) -> tuple[str, ...]:
    """Every key of `--api-key` flags, the FER_API_KEY value `env` and `--api-key-file`, each
    once, in that order; FerError (one line, no key in it) for a malformed one."""
    keys = [_checked(k, f"--api-key number {i}") for i, k in enumerate(flags, 1)]
    parts = [p.strip() for p in (env or "").split(",")]
    keys += [_checked(p, f"{ENV_VAR} (item {i})") for i, p in enumerate(parts, 1) if p]
    if key_file is not None:
        keys += read_key_file(key_file)
    return tuple(dict.fromkeys(keys))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost": addresses no other machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_access(host: str, keys: tuple[str, ...], no_auth: bool) -> None:
    """FerError unless the keys are well formed and a non-loopback bind has a key or --no-auth."""
    for i, key in enumerate(keys, 1):
        _checked(key, f"api_keys (number {i})")
    if keys and no_auth:
        raise FerError("--no-auth with an API key: give one or the other")
    if not keys and not no_auth and not is_loopback(host):
        raise FerError(f"--host {host} lets other machines reach the API: {HOW_TO_SET}")


# --------------------------------------------------------------------------- the middleware

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


async def answer(send: Send, status: int, message: str, *headers: tuple[bytes, bytes]) -> None:
    """A one-line JSON error {"error": message}, the connection closed after it."""
    body = json.dumps({"error": " ".join(message.split())}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """API keys on every path but the open ones, then the cap on requests in flight."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], keys: tuple[str, ...] = (),
                 max_concurrent: int = 0, counts: Counter[str] | None = None) -> None:
        self.app = app
        self.digests = tuple(_digest(k.encode("ascii")) for k in keys)
        self.cap = max_concurrent
        self.in_flight = 0
        self.counts = counts if counts is not None else Counter()

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        values = [v for k, v in headers if k.lower() == b"authorization"]
        if len(values) != 1:
            return False  # none, or several: ambiguous
        scheme, space, token = values[0].partition(b" ")
        if scheme.lower() != b"bearer" or not space:
            return False
        seen = _digest(token)
        ok = False
        for d in self.digests:  # every key, every time
            ok |= hmac.compare_digest(seen, d)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.digests and not is_open(path) and not self.authorized(scope.get("headers", [])):
            self.counts["401"] += 1
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await answer(send, 401, "missing or wrong API key: send the header "
                                "'Authorization: Bearer <key>'", (b"www-authenticate", b"Bearer"))
        if not self.cap or path not in LIMITED_PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.cap:
            self.counts["503"] += 1
            return await answer(send, 503, f"the server has {self.cap} requests in flight, its cap "
                                "(--max-concurrent): retry in a moment", (b"retry-after", b"1"))
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
