"""The SSH auth banner a MeshSSH server sends with a refusal, and the client's reading of it.

When meshssh-sshd refuses a login (SPEC §6, §9), it sends a ``SSH_MSG_USERAUTH_BANNER`` before
the failure: first the public text for people (plain OpenSSH shows it), then one line that
clients parse, ``MeshSSH-Refusal: <reason>``. The reason is a bounded label (``expired``,
``bad_audience``, ``not_authorized``, ...), never detail: the expected issuer, user ids and
the like stay in the server's log. ``meshssh ssh`` and ``meshssh ssh proxy`` turn the reason
into "Permission denied" with what to check next, and stop at once instead of asking for
another token.

Example::

    text = refusal_banner("Permission denied: ...", "not_authorized")
    parse_refusal(text)     # "not_authorized"
"""

from __future__ import annotations

import re

__all__ = ["REFUSAL_MARKER", "parse_refusal", "refusal_banner"]

REFUSAL_MARKER = "MeshSSH-Refusal: "
_REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")
_LINE = re.compile(r"^" + re.escape(REFUSAL_MARKER) + r"(\S*)\s*$", re.MULTILINE)


def refusal_banner(public: str, reason: str) -> str:
    """The banner for a refusal: the public text, then the machine-readable reason line.

    Raises:
        ValueError: ``reason`` is not a bounded label (lower case, digits, ``_``; 40 at most).
    """
    if not _REASON.fullmatch(reason):
        raise ValueError(f"not a refusal label: {reason[:50]!r}")
    text = public.replace("\r", " ").replace("\n", " ").strip()
    return f"{text}\r\n{REFUSAL_MARKER}{reason}\r\n"


def parse_refusal(banner: str) -> str | None:
    """The reason a server's banner gives for a refusal; None when it gives none (or garbage).

    The last well-formed ``MeshSSH-Refusal:`` line wins (a server sends one per refusal).
    """
    found = None
    for match in _LINE.finditer(banner):
        if _REASON.fullmatch(match[1]):
            found = match[1]
    return found
