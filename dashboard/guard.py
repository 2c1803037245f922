"""The dashboard server's front door: only the names it is served under get in.

Streamlit answers any `Host` over HTTP, and accepts a websocket whose `Origin` names
localhost on any port (server_util.is_url_from_allowed_origins): a page on another local
port, or a DNS-rebinding page whose name resolves to 127.0.0.1, could read every table and
write labels. `pulse dashboard` therefore serves the app as an `st.App` (dashboard/server.py)
with two ASGI middlewares in front of Streamlit:

- Starlette's own `TrustedHostMiddleware`: a request or websocket whose `Host` is not one
  of `allowed_hosts(...)` gets 400 "Invalid host header";
- `OriginGuard` (below, the only part written here): a websocket whose `Origin` is not the
  origin it was sent to (scheme http(s), the same host and port) is refused (403) before
  Streamlit sees it.

Streamlit's own `server.allowedHosts` is set to the same names (a second check on the
websocket).

    python -c "from dashboard.guard import allowed_hosts; print(allowed_hosts('127.0.0.1'))"
"""
from __future__ import annotations

import socket
from typing import Iterable
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


def allowed_hosts(address: str, extra: Iterable[str] = ()) -> list[str]:
    """The host names (no port) the dashboard answers to when listening on `address`: the
    loopback names, the address itself, and for a wildcard address this machine's names and
    addresses; plus `extra` (--allowed_hosts, e.g. the name a proxy or DNS gives it)."""
    names = list(LOOPBACK_NAMES)
    if address in ANY_ADDRESS:
        host = socket.gethostname()
        names += [host, socket.getfqdn()]
        try:
            names += [info[4][0] for info in socket.getaddrinfo(host, None)]
        except OSError:
            pass
    else:
        names.append(address)
    names += [name.strip() for name in extra if name.strip()]
    seen: list[str] = []
    for name in names:
        name = name.lower().strip("[]")
        # Starlette matches an IPv6 literal with its brackets, Streamlit without: give both.
        for form in ([name, f"[{name}]"] if ":" in name else [name]):
            if form and form not in seen:
                seen.append(form)
    return seen


def same_origin(origin: str, host: str | None, scheme: str) -> bool:
    """Whether a websocket's `Origin` header is the page it was opened from: the http(s)
    origin whose host and port are the websocket's `Host`."""
    if not host:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    expected = "https" if scheme in ("wss", "https") else "http"
    return parts.scheme == expected and parts.netloc.lower() == host.lower() and not parts.path.strip("/")


class OriginGuard:
    """ASGI middleware: a websocket handshake whose Origin is another site's is refused (403);
    one without Origin (not a browser) passes; plain HTTP passes (Host is checked before)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            origin = headers.get("origin")
            if origin is not None and not same_origin(origin, headers.get("host"), scope.get("scheme", "ws")):
                await send({"type": "websocket.close", "code": 1008})
                return
        await self.app(scope, receive, send)
