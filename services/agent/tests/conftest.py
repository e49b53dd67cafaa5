"""Fixtures for the agent's tests.

The agent's tests run real processes through the testkit plugin (nats-server, the agent via
``meshssh up --foreground``, meshssh-sshd and meshssh-relay as its children). The real
meshssh-authn with its embedded provider (``provider``) is shared with the client's login
tests, which own it (``cli/tests/authn_provider.py``). ``registration_front`` is the recording
HTTP front of policy's registration endpoint (``test_agent_registration``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "cli" / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # registration_front

from authn_provider import Provider, provider

__all__ = ["Provider", "provider"]
