"""What the server checks before it reads a request: where it comes from and how its body is built.

- ``ApiError``: a refusal, answered as an OpenAI error body (and counted) by the app.
- ``parse_body``: the request body as a JSON object, refusing nesting deeper than ``MAX_JSON_DEPTH``
  before ``json.loads`` sees it (a body of 100,000 ``[`` would otherwise raise a RecursionError).
- ``Access``: the ``Host`` and ``Origin`` checks against DNS rebinding and cross-origin pages. A web
  page the user opens can send requests to 127.0.0.1 (with an ``Origin`` header), or rebind its own
  name to 127.0.0.1 (with its own name in ``Host``); both are refused unless configured.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import numpy as np

MAX_JSON_DEPTH = 64
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("0.0.0.0", "::", "")

# a JSON string, or the rest of the body after an unterminated one: every match consumes what it scans
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (brackets inside strings do not count)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def parse_body(body: bytes | bytearray, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The body as a JSON object; ApiError 400 when it is not one, or nests deeper than ``max_depth``."""
    body = bytes(body)
    too_deep = ApiError(400, f"The request body nests arrays and objects deeper than {max_depth} levels.",
                        code="json_too_deep")
    openers = body.count(b"[") + body.count(b"{")  # the usual request has fewer: no deeper, no scan
    if openers > max_depth and json_depth(body) > max_depth:
        raise too_deep
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"The request body is not valid JSON: {e}.", code="invalid_json") from None
    except RecursionError:  # not expected after the depth check; never a 500
        raise too_deep from None
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def split_host(value: str) -> tuple[str, str | None]:
    """``Host`` header value as (lower-case name without brackets, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        name, _, rest = value[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") and rest[1:] else None
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name, port or None
    return value, None


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Access:
    """Which ``Host`` and ``Origin`` headers the server answers (``check`` raises ApiError 403 for others).

    Allowed hosts: the loopback names, the bound address (unless a wildcard) and ``allowed_hosts``
    (``name`` for any port, ``name:port`` for one, ``*`` for any). Bound to a wildcard address with an
    API key and no ``allowed_hosts``, any ``Host`` is answered (clients reach it by names the server
    cannot know; the key is what protects it). Allowed origins: the server's own (``http(s)://`` + the
    request's ``Host``) and ``allowed_origins`` (``*`` for any); a request without ``Origin`` (curl,
    SDKs) is not a browser's cross-origin request and is not refused for it.
    """

    def __init__(self, host: str, allowed_hosts: list[str], allowed_origins: list[str], has_key: bool):
        self.hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}
        self.any_host = "*" in self.hosts or (host.strip("[]") in WILDCARDS and has_key and not self.hosts)
        bound = host.strip("[]").lower()
        self.names = set(LOOPBACK_NAMES) | ({bound} if bound not in WILDCARDS else set())
        self.origins = {o.strip().rstrip("/").lower() for o in allowed_origins}

    def host_ok(self, header: str) -> bool:
        if self.any_host:
            return True
        name, port = split_host(header)
        if not name:
            return False
        if name in self.names or _is_loopback_ip(name):
            return True
        for entry in self.hosts:
            e_name, e_port = split_host(entry)
            if e_name == name and (e_port is None or e_port == port):
                return True
        return False

    def origin_ok(self, origin: str, host_header: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if "*" in self.origins or origin in self.origins:
            return True
        host = host_header.strip().lower()
        return bool(host) and origin in (f"http://{host}", f"https://{host}")

    def check(self, headers: Any) -> str | None:
        """Raise ApiError 403 for a refused ``Host`` or ``Origin``; the allowed cross-origin ``Origin`` or None."""
        host = headers.get("host", "")
        if not self.host_ok(host):
            raise ApiError(403, f"The Host header {host!r} is not one this server answers (DNS rebinding "
                           "protection); add the name to allowed_hosts (--allowed-hosts NAME) to serve it.",
                           "permission_error", "host_not_allowed")
        origin = headers.get("origin")
        if origin is None:
            return None
        if not self.origin_ok(origin, host):
            raise ApiError(403, f"Cross-origin requests from {origin!r} are not allowed; add the origin to "
                           "allowed_origins (--allowed-origins URL) to let a web page there use this server.",
                           "permission_error", "origin_not_allowed")
        return origin if origin.strip().rstrip("/").lower() in self.origins or "*" in self.origins else None
