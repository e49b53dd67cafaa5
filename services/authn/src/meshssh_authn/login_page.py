"""The HTML of the embedded provider's device login page (no JavaScript, no external assets).

The form posts ``username``, ``password`` and ``user_code`` (SPEC §11), plus ``action``
(``approve`` or ``deny``). Every value shown is HTML-escaped.
"""

from __future__ import annotations

import html

__all__ = ["SECURITY_HEADERS", "done_page", "login_page"]

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
main{max-width:24rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.8rem 0 .2rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}
.code{font-family:monospace;letter-spacing:.15em;text-transform:uppercase}
.row{display:flex;gap:.5rem;margin-top:1.2rem}button{flex:1;padding:.6rem;font-size:1rem}
.err{color:#a00}.hint{color:#555;font-size:.9rem}
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def login_page(*, user_code: str = "", username: str = "", error: str = "") -> str:
    """The sign-in form; ``error`` is shown above it."""
    err = f'<p class="err" role="alert">{html.escape(error)}</p>' if error else ""
    return _page(
        "meshssh sign-in",
        "<h1>Sign in to meshssh</h1>"
        '<p class="hint">Enter the code your terminal shows. Only continue if you started '
        "this sign-in yourself.</p>"
        f"{err}"
        '<form method="post" action="device">'
        '<label for="user_code">Code</label>'
        f'<input class="code" id="user_code" name="user_code" required autocomplete="off" '
        f'value="{html.escape(user_code)}" placeholder="XXXX-XXXX">'
        '<label for="username">User name</label>'
        f'<input id="username" name="username" required autocomplete="username" '
        f'value="{html.escape(username)}">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" required '
        'autocomplete="current-password">'
        '<div class="row"><button name="action" value="approve" type="submit">Sign in</button>'
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
