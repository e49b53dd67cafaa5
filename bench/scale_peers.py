"""Fake peers for ``policy_scale.py``: each follows its own map key the way a real peer does.

Not a benchmark of its own (``make bench`` skips it): ``policy_scale.py`` starts several of
these processes, so that decoding and verifying 20,000 maps does not run in the one process
that also times them. A peer here speaks the real protocol: a
:class:`~meshssh_common.key_watch.KeyWatch` on ``meshssh-netmaps`` ``peer.<id>`` (a direct get
plus a plain subscription, no consumer), every map's Ed25519 signature checked against the
pinned map key, each delta applied to the snapshot it names: each peer is a
:class:`~meshssh_common.peer_map.PeerMap`, the follower sshd, the relay and the agent use.
Two kinds:

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
import gc
import json
import logging
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from meshssh_common.bus_permissions import inbox_prefix
from meshssh_common.key_watch import Reconnects
from meshssh_common.logs import service_logger
from meshssh_common.metrics import ServiceMetrics
from meshssh_common.nats_jwt import read_creds
from meshssh_common.peer_map import PeerMap
from meshssh_common.signed_doc import write_pins
from meshssh_common.wire import NetworkMap, Pins

CONNECT_AT_ONCE = 8
BATCH = 50  # own-connection peers started together
FLUSH_AFTER = 0.02


class _Failures(logging.Handler):
    """A follower's warnings (failed reads, refused maps) as ``R`` lines."""

    def __init__(self, peers: Peers) -> None:
        super().__init__(logging.WARNING)
        self.peers = peers

    def emit(self, record: logging.LogRecord) -> None:
        self.peers._emit("R " + record.getMessage().split(";")[0].replace(" ", "-"))


class Peers:
    """The followers of one process; writes what they see to stdout."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.pins = Path(tempfile.mkdtemp(prefix="scale-peers-")) / "pins.json"
        write_pins(self.pins, Pins(map=tuple(cfg["pins"])))
        self.log = service_logger("scale-peers")
        self.log.logger.setLevel(logging.WARNING)  # no line per applied map
        self.log.logger.addHandler(_Failures(self))
        self.metrics = ServiceMetrics("scale_peers")
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
        maps = PeerMap(log=self.log, metrics=self.metrics, pins=self.pins)
        maps.on_change(lambda old, new: self._applied(peer_id, new))
        follow = maps.follow(nc, peer_id, resync_every=resync, reconnects=bell)
        self.tasks.append(asyncio.create_task(follow))
        self.tasks.append(asyncio.create_task(self._sync(peer_id, maps)))

    def _applied(self, peer_id: str, netmap: NetworkMap | None) -> None:
        if netmap is not None:
            self._emit(f"D {peer_id} {netmap.serial} {time.monotonic():.6f}")

    async def _sync(self, peer_id: str, maps: PeerMap) -> None:
        await maps.received.wait()
        self.synced.add(peer_id)
        self.progress.set()

    def _emit(self, line: str) -> None:
        if not self.out:
            # lines carry their own times: writing them 20 ms later, in bigger batches, costs
            # the timed peers less CPU and changes no figure
            asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flush)
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
            await self._synced_up_to(len(self.tasks) // 2)
        shared: list[str] = self.cfg["shared"]
        per_conn = int(self.cfg["per_conn"])
        for i in range(0, len(shared), per_conn):
            nc = await self._connect(self.cfg["admin_creds"])
            bell = Reconnects(nc)
            for peer_id in shared[i : i + per_conn]:
                self._watch(nc, peer_id, bell, resync=float(self.cfg["shared_resync"]))
            await self._synced_up_to(len(self.tasks) // 2)
        gc.collect()
        gc.freeze()  # 20,000 followers are long-lived: no full collection walks them again
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
