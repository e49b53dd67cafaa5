"""The HTML of the embedded provider's device login pages (no JavaScript, no external assets).

Two steps (RFC 8628 §5.4): :func:`code_page` asks for the code (a GET form, so
``verification_uri_complete`` lands on the next step directly); :func:`login_page` then shows
what the code approves (the server peer, the local user, the source peer and address, when it
was asked) and posts ``username``, ``password`` and ``user_code`` (SPEC §11), ``action``
(``approve`` or ``deny``) and ``confirm=yes`` (the box saying the user started this login,
required to approve). Every value shown is HTML-escaped.
"""

from __future__ import annotations

import html
import time

from meshssh_authn.device_grants import DeviceContext

__all__ = ["SECURITY_HEADERS", "code_page", "done_page", "login_page"]

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
}

_STYLE = """
body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0}
main{max-width:26rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.8rem 0 .2rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}
.code{font-family:monospace;letter-spacing:.15em;text-transform:uppercase}
.row{display:flex;gap:.5rem;margin-top:1.2rem}button{flex:1;padding:.6rem;font-size:1rem}
.err{color:#a00}.hint{color:#555;font-size:.9rem}
.ctx{border-collapse:collapse;width:100%;margin:.8rem 0}
.ctx th,.ctx td{text-align:left;padding:.3rem;border-bottom:1px solid #ddd;vertical-align:top}
.ctx th{width:6rem;color:#444}
.confirm{display:flex;gap:.5rem;align-items:flex-start}.confirm input{width:auto}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def _error(error: str) -> str:
    return f'<p class="err" role="alert">{html.escape(error)}</p>' if error else ""


def code_page(*, user_code: str = "", error: str = "") -> str:
    """Step one: the code the terminal shows (a GET form back to ``/device``)."""
    return _page(
        "meshssh sign-in",
        "<h1>Sign in to meshssh</h1>"
        '<p class="hint">Enter the code your terminal shows. Only continue if you started '
        "this sign-in yourself.</p>"
        f"{_error(error)}"
        '<form method="get" action="device">'
        '<label for="user_code">Code</label>'
        f'<input class="code" id="user_code" name="user_code" required autocomplete="off" '
        f'value="{html.escape(user_code)}" placeholder="XXXX-XXXX">'
        '<div class="row"><button type="submit">Continue</button></div>'
        "</form>",
    )


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _described(context: DeviceContext | None, created_at: float) -> str:
    """The table of what the code approves."""
    rows: list[tuple[str, str]] = []
    if context is None:
        rows.append(("Request", "a meshssh sign-in on your computer (meshssh login)"))
    else:
        server = context.server_peer_name or context.server_peer or "unknown"
        if context.server_peer and context.server_peer != server:
            server += f" ({context.server_peer})"
        source = context.source_peer_name or context.source_peer or "not a known peer"
        rows += [
            ("Server", server),
            ("Log in as", context.local_user or "unknown"),
            ("From", f"{source}, address {context.source_addr or 'unknown'}"),
        ]
    rows.append(("Requested", _when(created_at)))
    cells = "".join(
        f"<tr><th scope=row>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f'<table class="ctx">{cells}</table>'


def login_page(
    *,
    user_code: str,
    context: DeviceContext | None,
    created_at: float,
    username: str = "",
    error: str = "",
) -> str:
    """Step two: what the code approves, the credentials, and the confirm box."""
    return _page(
        "meshssh sign-in",
        "<h1>Approve this sign-in?</h1>"
        '<p class="hint">This code approves the login below. If you did not start it '
        "yourself, just now, choose Deny.</p>"
        f"{_described(context, created_at)}"
        f"{_error(error)}"
        '<form method="post" action="device">'
        f'<input type="hidden" name="user_code" value="{html.escape(user_code)}">'
        '<label for="username">User name</label>'
        f'<input id="username" name="username" required autocomplete="username" '
        f'value="{html.escape(username)}">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" required '
        'autocomplete="current-password">'
        '<label class="confirm"><input type="checkbox" name="confirm" value="yes"> '
        "I started this sign-in, for the server, user and source shown above</label>"
        '<div class="row"><button name="action" value="approve" type="submit">Approve</button>'
        '<button name="action" value="deny" type="submit">Deny</button></div>'
        "</form>",
    )


def done_page(*, approved: bool, username: str) -> str:
    """What the browser shows after the form was accepted."""
    if approved:
        body = (
            "<h1>You are signed in</h1>"
            f"<p>Signed in as <b>{html.escape(username)}</b>. "
            "Return to your terminal; you can close this window.</p>"
        )
    else:
        body = "<h1>Sign-in denied</h1><p>The request was refused. You can close this window.</p>"
    return _page("meshssh sign-in", body)
