"""A secret's fingerprint for logs: enough to tell two secrets apart, never the secret.

Logs and audit records name a token, key or password by ``sha256:`` and the first 12 hex
digits of its SHA-256 (48 bits: a collision between two live secrets is negligible, and the
prefix gives nothing to brute-force a 128-bit or larger secret with).

Example::

    log.info("admin token generated", extra={"admin_token_sha256": fingerprint(token)})
    fingerprint("s3cr3t")      # "sha256:0d1f2b..."
"""

from __future__ import annotations

import hashlib

__all__ = ["fingerprint"]


def fingerprint(secret: str | bytes) -> str:
    """``sha256:`` and the first 12 hex digits of the SHA-256 of ``secret``."""
    data = secret.encode() if isinstance(secret, str) else secret
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]
