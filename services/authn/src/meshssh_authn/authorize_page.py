"""The HTML of the embedded provider's sign-in page for the authorization code grant.

It names the client and where the browser goes next, and carries the checked authorization
request in hidden fields (re-checked when posted). The form posts ``username`` and
``password`` (as the device page does). Every value shown is HTML-escaped; no JavaScript.
"""

from __future__ import annotations

import html

from meshssh_authn.auth_codes import AuthRequest
from meshssh_authn.login_page import SECURITY_HEADERS

__all__ = ["SECURITY_HEADERS", "authorize_page", "error_page"]

_STYLE = """
body{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;color:#1b1b1b}
main{max-width:24rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin-top:0}label{display:block;margin:.8rem 0 .2rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}
button{margin-top:1.2rem;width:100%;padding:.6rem;font-size:1rem}
.err{color:#a00}.hint{color:#444;font-size:.9rem}code{word-break:break-all}
"""

_FIELDS = ("client_id", "redirect_uri", "state", "code_challenge", "scope", "nonce")


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


def authorize_page(request: AuthRequest, *, username: str = "", error: str = "") -> str:
    """The sign-in form for ``request``; ``error`` is shown above it."""
    err = f'<p class="err" role="alert">{html.escape(error)}</p>' if error else ""
    hidden = "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(getattr(request, name))}">'
        for name in _FIELDS
    )
    return _page(
        "meshssh sign-in",
        "<h1>Sign in to the meshssh dashboard</h1>"
        f'<p class="hint">After signing in you return to '
        f"<code>{html.escape(request.redirect_uri)}</code>.</p>"
        f"{err}"
        '<form method="post" action="authorize">'
        f"{hidden}"
        '<input type="hidden" name="response_type" value="code">'
        '<input type="hidden" name="code_challenge_method" value="S256">'
        '<label for="username">User name</label>'
        f'<input id="username" name="username" required autocomplete="username" '
        f'value="{html.escape(username)}">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" required '
        'autocomplete="current-password">'
        '<button type="submit">Sign in</button>'
        "</form>",
    )


def error_page(description: str) -> str:
    """A request the provider will not send back to the client."""
    return _page(
        "meshssh sign-in",
        f'<h1>Sign-in refused</h1><p class="err" role="alert">{html.escape(description)}</p>'
        "<p>Start again from the application you came from.</p>",
    )
