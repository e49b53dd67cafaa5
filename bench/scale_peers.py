"""Fake peers for ``policy_scale.py``: each follows its own map key the way a real peer does.

Not a benchmark of its own (``make bench`` skips it): ``policy_scale.py`` starts several of
these processes, so that decoding and verifying 20,000 maps does not run in the one process
that also times them. A peer here speaks the real protocol: a
:class:`~meshssh_common.key_watch.KeyWatch` on ``meshssh-netmaps`` ``peer.<id>`` (a direct get
plus a plain subscription, no consumer), every map's Ed25519 signature checked against the
pinned map key. Two kinds:

- *own*: a peer with its own NATS connection and its own peer credentials (a user JWT with
  exactly ``peer_permissions``, as policy mints them at registration): the peers whose
  change latency is timed;
- *shared*: the other registered peers, ``per_conn`` to a connection under the admin
  identity (20,000 connections would not fit beside everything else on the bench machine);
  they hold the same subscriptions and make the same first read, but their safety-net
  re-read comes every ``shared_resync`` seconds instead of 30: at 30 s, 19,000 re-reads of
  30 KiB maps every 30 s in three Python processes on a loaded 2-core machine fell behind,
  and nats-server buffered up to 12 GB for them (slow consumers), which timed nothing real.

It reads one JSON line on stdin (``urls``, ``ca``, ``pins``, ``own`` [[peer id, creds
path], ...], ``shared`` [peer id, ...], ``admin_creds``, ``per_conn``, ``shared_resync``),
and writes lines to stdout: ``SYNCED <seconds>`` once every peer read its stored map, then
``D <peer id> <serial> <time.monotonic()>`` for every newer map (``CLOCK_MONOTONIC`` is
machine-wide on Linux, so the parent compares it with its own clock), and ``R <error type>``
for a failing read.

Run: by ``policy_scale.py`` only.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from meshssh_common import subjects
from meshssh_common.bus_permissions import inbox_prefix
from meshssh_common.key_watch import KeyWatch, Reconnects
from meshssh_common.nats_jwt import read_creds
from meshssh_common.signed_doc import Verifier
from meshssh_common.wire import NetworkMap

CONNECT_AT_ONCE = 8
BATCH = 50  # own-connection peers started together


def _serial(netmap: NetworkMap) -> int:
    return netmap.serial


class Peers:
    """The followers of one process; writes what they see to stdout."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.verifier = Verifier("map", cfg["pins"])
        self.synced: set[str] = set()
        self.progress = asyncio.Event()
        self.conns: list[NATS] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.out: list[str] = []

    def _options(self, creds: str) -> dict[str, Any]:
        options: dict[str, Any] = {
            "user_credentials": creds,
            "inbox_prefix": inbox_prefix(read_creds(Path(creds)).public_key),
            "max_reconnect_attempts": -1,
            "error_cb": self._error,
        }
        if self.cfg["ca"]:
            options["tls"] = ssl.create_default_context(cafile=self.cfg["ca"])
        return options

    async def _error(self, error: Exception) -> None:
        self._emit(f"R nats-{type(error).__name__}")

    async def _connect(self, creds: str) -> NATS:
        for attempt in range(5):  # a starved client can miss the server's auth timeout
            try:
                nc = await nats.connect(
                    servers=self.cfg["urls"], connect_timeout=10, **self._options(creds)
                )
            except (nats.errors.Error, OSError, TimeoutError) as e:
                self._emit(f"R connect-{type(e).__name__}")
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            self.conns.append(nc)
            return nc
        raise RuntimeError(f"could not connect with {creds}")

    def _watch(self, nc: NATS, peer_id: str, bell: Reconnects, *, resync: float = 30.0) -> None:
        watch = KeyWatch(
            nc,
            subjects.BUCKET_NETMAPS,
            subjects.netmap_key(peer_id),
            NetworkMap,
            version=_serial,
            reconnects=bell,
            verifier=self.verifier,
            resync_every=resync,
        )
        self.tasks.append(asyncio.create_task(self._follow(peer_id, watch)))

    async def _follow(self, peer_id: str, watch: KeyWatch[NetworkMap]) -> None:
        async for event in watch.follow(on_retry=lambda e: self._emit(f"R {type(e).__name__}")):
            if event.synced:
                self.synced.add(peer_id)
                self.progress.set()
            elif event.value is not None:
                self._emit(f"D {peer_id} {event.value.serial} {time.monotonic():.6f}")

    def _emit(self, line: str) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush)
        self.out.append(line)

    def _flush(self) -> None:
        sys.stdout.write("\n".join(self.out) + "\n")
        sys.stdout.flush()
        self.out.clear()

    async def run(self) -> None:
        """Follow every peer until stdin ends (the parent closes it to stop us)."""
        loop = asyncio.get_running_loop()
        stdin_done = loop.run_in_executor(None, sys.stdin.read)
        work = asyncio.create_task(self._start())
        await asyncio.wait({work, stdin_done}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            work.result()  # a failure to start ends the process, visibly
            await stdin_done
        work.cancel()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(work, *self.tasks, return_exceptions=True)
        for nc in self.conns:
            await nc.close()

    async def _start(self) -> None:
        """Connect and follow in batches, each read before the next starts.

        All at once, 20,000 first reads on a loaded 2-core machine starved the clients until
        the server closed them (authentication timeouts, slow consumers).
        """
        started = time.monotonic()
        sem = asyncio.Semaphore(CONNECT_AT_ONCE)

        async def own(peer_id: str, creds: str) -> None:
            async with sem:
                nc = await self._connect(creds)
            self._watch(nc, peer_id, Reconnects(nc))

        mine: list[list[str]] = self.cfg["own"]
        for i in range(0, len(mine), BATCH):
            await asyncio.gather(*(own(p, c) for p, c in mine[i : i + BATCH]))
            await self._synced_up_to(len(self.tasks))
        shared: list[str] = self.cfg["shared"]
        per_conn = int(self.cfg["per_conn"])
        for i in range(0, len(shared), per_conn):
            nc = await self._connect(self.cfg["admin_creds"])
            bell = Reconnects(nc)
            for peer_id in shared[i : i + per_conn]:
                self._watch(nc, peer_id, bell, resync=float(self.cfg["shared_resync"]))
            await self._synced_up_to(len(self.tasks))
        self._emit(f"SYNCED {time.monotonic() - started:.3f}")
        await asyncio.Future()  # follow until cancelled

    async def _synced_up_to(self, count: int) -> None:
        while len(self.synced) < count:
            self.progress.clear()
            await self.progress.wait()


def main() -> int:
    line = "" if sys.stdin.isatty() else sys.stdin.readline()
    if not line:  # `make bench` runs every bench/*.py: nothing to do on its own
        print("scale_peers: the fake peers of policy_scale.py; run that instead")
        return 0
    cfg = json.loads(line)
    asyncio.run(Peers(cfg).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
