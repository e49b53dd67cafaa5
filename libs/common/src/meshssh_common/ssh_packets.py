"""asyncssh's packet path, made cheaper for bulk data (sshd and the CLI install it at start).

Profiling meshssh-sshd under 1 GiB uploads and downloads (py-spy; ``bench/ssh_throughput.py``)
showed asyncssh 2.24.1 spending most of its time around the cipher, not in it:

- every packet goes out behind an encrypted ``SSH_MSG_IGNORE`` (RFC 4251 §9.3.1's defence
  for CBC's predictable IVs): two encryptions and two socket writes per data packet, also
  for the AEAD ciphers, which need no such defence and where OpenSSH sends none;
- each packet's debug line is formatted although packet logging is off;
- the receive buffer is one ``bytes`` re-sliced after every packet, so a 256 KiB read holding
  eight packets is copied about four times over;
- AES-GCM builds a new AESGCM object per packet, and chacha20-poly1305@openssh.com three
  ChaCha20 contexts and a Poly1305 one (about 25 µs of overhead per packet), copying the
  packet twice on the way (:mod:`meshssh_common.ssh_aead`);
- payloads are joined three times on their way from a channel to the cipher, and a channel
  write of N packets is N socket writes.

Two settings go with it. glibc's allocator serves blocks of 128 KiB and more with a fresh
``mmap`` (and unmaps them on free), so every 256 KiB socket read and every large packet paid
page faults and zeroing; :func:`install` raises that threshold to 4 MiB and the heap's trim
threshold to 8 MiB (``mallopt``; measured in-process, 128 KiB packets: 2.8 → 1.3 CPU s/GiB).
And channels between two meshssh ends (sshd, the proxy) may use packets of ``MAX_PACKET``
(128 KiB) instead of asyncssh's 32 KiB: a quarter of the per-packet work. OpenSSH clients
keep their own 32 KiB limit for what they receive; what they send may use the larger one.

:func:`install` replaces exactly those steps, keeping asyncssh's own logic for everything
else (key exchange, rekeying, deferral before auth, compression, the ``SSH_MSG_IGNORE`` for
non-AEAD ciphers, channel state and flow control). It patches the classes, so it applies
to every asyncssh connection of the process, client and server alike. It only does so on
the asyncssh version it was written against (the lock pins it); on any other it changes
nothing and returns False.

Example::

    from meshssh_common import ssh_packets
    ssh_packets.install()
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh import channel as _channel
from asyncssh import connection as _connection
from asyncssh import packet as _packet
from asyncssh.logging import SSHLogger

from meshssh_common import ssh_aead

__all__ = ["ASYNCSSH_VERSION", "MAX_PACKET", "InputBuffer", "install", "installed", "tune_malloc"]

ASYNCSSH_VERSION = "2.24.1"  # the version whose internals this module replaces
MAX_PACKET = 128 * 1024  # channel max_pktsize to offer (asyncssh accepts 256 KiB packets)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 4 * 1024 * 1024
_TRIM_THRESHOLD = 8 * 1024 * 1024

_MSG_IGNORE = 2
_MSG_DEBUG = 4
_MSG_SERVICE_REQUEST = 5
_MSG_SERVICE_ACCEPT = 6
_MSG_NEWKEYS = 21
_MSG_KEX_LAST = 49
_MSG_USERAUTH_LAST = 79
_MSG_USERAUTH_BANNER = 53
_MSG_CHANNEL_DATA = 94
_MSG_CHANNEL_EXTENDED_DATA = 95
_MSG_CHANNEL_EOF = 96
_EARLY = frozenset({_MSG_DEBUG, _MSG_SERVICE_REQUEST, _MSG_SERVICE_ACCEPT})
_SMALL = 256  # input slices up to this size are returned as bytes (headers, MACs, banners)
_installed = False


def installed() -> bool:
    """Whether :func:`install` patched asyncssh in this process."""
    return _installed


def tune_malloc() -> bool:
    """Keep buffers up to 4 MiB on the heap (glibc only; see the module docstring)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def install() -> bool:
    """Patch asyncssh's packet path and tune malloc (idempotent).

    Returns:
        False when asyncssh is not the pinned version (then nothing is patched).
    """
    global _installed
    if _installed:
        return True
    if asyncssh.__version__ != ASYNCSSH_VERSION:
        return False
    tune_malloc()
    conn_cls: Any = _connection.SSHConnection
    conn_cls._mesh_cork = None
    conn_cls.send_packet = _send_packet
    conn_cls._send = _send
    conn_cls.data_received = _data_received
    chan_cls: Any = _channel.SSHChannel
    chan_cls.send_packet = _channel_send_packet
    chan_cls.write = _channel_write
    chan_cls._flush_send_buf = _flush_send_buf
    logger_cls: Any = _packet.SSHPacketLogger
    logger_cls._log_packet = _quiet(logger_cls._log_packet)
    ssh_aead.patch()
    _installed = True
    return True


# -- sending ----------------------------------------------------------------------------------


def _send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
    """``SSHConnection.send_packet`` with one join per packet and no IGNORE before AEAD data."""
    if (
        self._auth_complete
        and self._kex_complete
        and (
            self._rekey_bytes_sent >= self._rekey_bytes
            or (self._rekey_seconds and time.monotonic() >= self._rekey_time)
        )
    ):
        self._send_kexinit()
        self._kexinit_sent = True
    if (
        ((pkttype in _EARLY or pkttype > _MSG_KEX_LAST) and not self._kex_complete)
        or (pkttype == _MSG_USERAUTH_BANNER and not (self._auth_in_progress or self._auth_complete))
        or (pkttype > _MSG_USERAUTH_LAST and not self._auth_complete)
    ):
        self._deferred_packets.append((pkttype, args))
        return
    enc = self._send_encryption
    if enc is not None and pkttype > _MSG_KEX_LAST and not isinstance(enc, ssh_aead.AEAD):
        self.send_packet(_MSG_IGNORE, _packet.String(b""))
    if self._compressor and (self._auth_complete or not self._compress_after_auth):
        payload = self._compressor.compress(bytes((pkttype,)) + b"".join(args))
        if payload is None:  # pragma: no cover - zlib does not fail here
            raise asyncssh.CompressionError("Compression failed")
        parts: tuple[bytes, ...] = (payload,)
        size = len(payload)
    else:
        parts = (bytes((pkttype,)), *args)
        size = 1 + sum(map(len, args))
    padlen = -(self._send_enchdrlen + size) % self._send_blocksize
    if padlen < 4:
        padlen += self._send_blocksize
    body = b"".join((bytes((padlen,)), *parts, os.urandom(padlen)))
    pktlen = len(body)
    hdr = pktlen.to_bytes(4, "big")
    seq = self._send_seq
    if enc is not None:
        data, mac = enc.encrypt_packet(seq, hdr, body)
        self._send(data + mac if mac else data)
    else:
        self._send(hdr + body)
    if self._send_seq == 0xFFFFFFFF and not enc:
        self._send_seq = 0
        raise asyncssh.ProtocolError("Sequence rollover before kex complete")
    if pkttype == _MSG_NEWKEYS and self._strict_kex:
        self._send_seq = 0
    else:
        self._send_seq = (seq + 1) & 0xFFFFFFFF
    if self._kex_complete:
        self._rekey_bytes_sent += pktlen
    if SSHLogger._debug_level >= 3:
        (handler or self).log_sent_packet(pkttype, seq, bytes((pkttype,)) + b"".join(args))


def _send(self: Any, data: bytes) -> None:
    """``SSHConnection._send``: held while corked (one write per channel flush)."""
    if self._mesh_cork is not None:
        self._mesh_cork.append(data)
        return
    transport = self._transport
    if transport:
        with contextlib.suppress(ConnectionError):  # as asyncssh does
            transport.write(data)


def _channel_send_packet(self: Any, pkttype: int, *args: bytes) -> None:
    """``SSHChannel.send_packet`` without joining the payload (the connection joins once)."""
    if self._send_chan is None:  # pragma: no cover - as asyncssh does
        return
    self._conn.send_packet(pkttype, self._send_chan.to_bytes(4, "big"), *args, handler=self)


def _channel_write(self: Any, data: Any, datatype: Any = None) -> None:
    """``SSHChannel.write`` queueing a read-only view of the data instead of a copy."""
    if self._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    if datatype is not None and datatype not in self._write_datatypes:
        raise OSError("Invalid extended data type")
    if not data:
        return
    if self._encoding:
        data = self._encoder.encode(data)
    elif type(data) is not bytes:
        data = bytes(data)  # the caller may reuse a mutable buffer
    if SSHLogger._debug_level >= 2:
        self.logger.debug2(
            "Sending %d data bytes%s", len(data), f" (type {datatype})" * bool(datatype)
        )
    self._send_buf.append((memoryview(data), datatype))
    self._send_buf_len += len(data)
    self._flush_send_buf()


def _flush_send_buf(self: Any) -> None:
    """``SSHChannel._flush_send_buf``: zero-copy packet slices, all sent in one write."""
    conn = self._conn
    transport = conn._transport if conn is not None else None
    held: list[Any] | None = None
    if transport and conn._mesh_cork is None:
        # Kept: a close during the flush (asyncssh's _force_close) drops conn._transport but
        # aborts it only on the next loop turn, so what was sent before still goes out first.
        conn._mesh_cork = held = []
    try:
        queue = self._send_buf
        while queue and self._send_window:
            size = min(self._send_window, self._send_pktsize)
            buf, datatype = queue[0]
            if len(buf) > size:
                data = buf[:size]
                queue[0] = (buf[size:], datatype)
            else:
                data = buf
                del queue[0]
            n = len(data)
            self._send_buf_len -= n
            self._send_window -= n
            if datatype is None:
                self.send_packet(_MSG_CHANNEL_DATA, n.to_bytes(4, "big"), data)
            else:
                self.send_packet(
                    _MSG_CHANNEL_EXTENDED_DATA,
                    datatype.to_bytes(4, "big"),
                    n.to_bytes(4, "big"),
                    data,
                )
        self._pause_resume_writing()
        if not self._send_buf:
            if self._send_state == "eof_pending":
                self.send_packet(_MSG_CHANNEL_EOF)
                self._send_state = "eof"
            elif self._send_state == "close_pending":
                self._close_send()
    finally:
        if held is not None:
            conn._mesh_cork = None
            _write_all(transport, held)


def _write_all(transport: Any, held: list[Any]) -> None:
    if not held:
        return
    with contextlib.suppress(ConnectionError):  # as asyncssh's _send
        if len(held) == 1:
            transport.write(held[0])
        else:
            transport.writelines(held)


def _quiet(log: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``SSHPacketLogger._log_packet``: nothing to format unless packets are logged."""

    def _log_packet(self: Any, *args: Any) -> None:
        if SSHLogger._debug_level >= 3:
            log(self, *args)

    return _log_packet


# -- receiving --------------------------------------------------------------------------------


class InputBuffer:
    """Received bytes not parsed yet: a list of chunks and an offset, never re-copied whole.

    It stands in for asyncssh's ``bytes`` input buffer and supports what asyncssh does with
    that: ``+=``, ``len``, truth, ``find`` and slices. A slice to the end (``buf[n:]``,
    consuming ``n`` bytes) shares the chunks; a slice inside one chunk is a zero-copy
    ``memoryview`` when large (a packet body; asyncssh's ciphers and the AEAD code here read
    those), ``bytes`` otherwise.
    """

    __slots__ = ("_chunks", "_len", "_start")

    def __init__(self, data: bytes = b"", chunks: list[bytes] | None = None, start: int = 0):
        self._chunks: list[bytes] = chunks if chunks is not None else ([data] if data else [])
        self._start = start
        self._len = sum(map(len, self._chunks)) - start

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iadd__(self, data: bytes) -> InputBuffer:
        if data:
            if not self._chunks:
                self._start = 0
            self._chunks.append(bytes(data))
            self._len += len(data)
        return self

    def __bytes__(self) -> bytes:
        return bytes(self._slice(0, self._len))

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        """``bytes.find`` over the buffered bytes."""
        stop = self._len if end is None else min(end, self._len)
        return bytes(self._slice(0, stop)).find(sub, start)

    def __getitem__(self, key: slice) -> Any:
        if not isinstance(key, slice):
            raise TypeError("InputBuffer supports slices only")
        start, stop, step = key.indices(self._len)
        if step != 1:
            raise ValueError("InputBuffer slices have step 1")
        if key.stop is None:
            return self._drop(start)
        return self._slice(start, max(start, stop))

    def _drop(self, n: int) -> InputBuffer:
        chunks, start = self._chunks, self._start + n
        i = 0
        while i < len(chunks) and start >= len(chunks[i]):
            start -= len(chunks[i])
            i += 1
        return InputBuffer(chunks=chunks[i:], start=start if i < len(chunks) else 0)

    def _slice(self, a: int, b: int) -> bytes | memoryview:
        a += self._start
        b += self._start
        for chunk in self._chunks:
            size = len(chunk)
            if a < size:
                if b <= size:
                    if b - a > _SMALL:
                        return memoryview(chunk)[a:b]
                    return chunk[a:b]
                break
            a -= size
            b -= size
        else:
            return b""
        parts: list[bytes | memoryview] = []
        for piece in self._chunks[self._chunks.index(chunk) :]:
            if b <= 0:
                break
            parts.append(memoryview(piece)[max(a, 0) : min(b, len(piece))])
            a -= len(piece)
            b -= len(piece)
        return b"".join(parts)


def _data_received(self: Any, data: bytes, datatype: Any = None) -> None:
    """``SSHConnection.data_received`` over an :class:`InputBuffer`."""
    buf = self._inpbuf
    if type(buf) is not InputBuffer:
        buf = InputBuffer(bytes(buf))
    buf += data
    self._inpbuf = buf
    self._recv_data()
