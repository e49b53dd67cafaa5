"""The management REST API as ``meshctl`` uses it: one client, errors as one clear line.

Example::

    api = AdminApi("http://127.0.0.1:8080", token)
    peers = api.get("/peers")
"""

from __future__ import annotations

import os
from typing import Any

import httpx

__all__ = ["DEFAULT_API", "AdminApi", "AdminError", "resolve_settings"]

DEFAULT_API = "http://127.0.0.1:8080"


class AdminError(Exception):
    """A failure to show the operator as one line (exit code 1)."""


def resolve_settings(api: str | None, token: str | None) -> tuple[str, str]:
    """The API URL and admin token from flags, then ``MESHSSH_API_URL``/``MESHSSH_ADMIN_TOKEN``.

    Raises:
        AdminError: no token anywhere.
    """
    url = (api or os.environ.get("MESHSSH_API_URL") or DEFAULT_API).rstrip("/")
    secret = token or os.environ.get("MESHSSH_ADMIN_TOKEN") or ""
    if not secret:
        raise AdminError("no admin token: pass --token or set MESHSSH_ADMIN_TOKEN")
    if not url.startswith(("http://", "https://")):
        raise AdminError(f"--api must be an http(s) URL, got {url!r}")
    return url, secret


class AdminApi:
    """Calls ``<url>/api/v1/...`` with the admin bearer token."""

    def __init__(self, url: str, token: str, *, timeout: float = 15.0) -> None:
        self.url = url
        self._client = httpx.Client(
            base_url=f"{url}/api/v1",
            headers={"Authorization": f"Bearer {token}", "User-Agent": "meshctl"},
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request; returns the decoded JSON (None for 204).

        Raises:
            AdminError: unreachable, refused, or an error reply (its message, one line).
        """
        try:
            r = self._client.request(method, path, json=body)
        except httpx.ConnectError as e:
            raise AdminError(
                f"cannot reach the management API at {self.url} ({e}); is meshssh-policy "
                "running? set --api or MESHSSH_API_URL"
            ) from e
        except httpx.TimeoutException as e:
            raise AdminError(f"the management API at {self.url} did not answer in time") from e
        except httpx.HTTPError as e:
            raise AdminError(f"request to {self.url} failed: {e}") from e
        if r.status_code == 401:
            raise AdminError(
                "the management API refused the admin token; check --token or MESHSSH_ADMIN_TOKEN"
            )
        if r.status_code >= 400:
            try:
                message = str(r.json().get("error") or r.text)
            except ValueError:
                message = r.text.strip() or r.reason_phrase
            raise AdminError(" ".join(message.split()) or f"HTTP {r.status_code}")
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError as e:
            raise AdminError(f"the management API sent a reply that is not JSON: {e}") from e

    def get_bytes(self, path: str) -> bytes:
        """GET ``path`` and return the body as it came (files, not JSON).

        Raises:
            AdminError: unreachable, refused, or an error reply.
        """
        try:
            r = self._client.get(path)
        except httpx.HTTPError as e:
            raise AdminError(f"request to {self.url} failed: {e}") from e
        if r.status_code >= 400:
            try:
                message = str(r.json().get("error") or r.text)
            except ValueError:
                message = r.text.strip() or r.reason_phrase
            raise AdminError(" ".join(message.split()) or f"HTTP {r.status_code}")
        return r.content

    def get(self, path: str) -> Any:
        """GET ``path``."""
        return self.call("GET", path)

    def find_peer(self, ref: str) -> dict[str, Any]:
        """The peer whose id or name is ``ref``.

        Raises:
            AdminError: none, or the name is ambiguous.
        """
        try:
            peer: dict[str, Any] = self.get(f"/peers/{ref}")
            return peer
        except AdminError as e:
            if "does not exist" not in str(e):
                raise
        matches = [p for p in self.get("/peers") if p["name"] == ref]
        if not matches:
            raise AdminError(f"no peer with id or name {ref!r}")
        if len(matches) > 1:
            raise AdminError(f"several peers are named {ref!r}; use the id")
        found: dict[str, Any] = matches[0]
        return found
