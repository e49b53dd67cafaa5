"""AES-GCM and chacha20-poly1305@openssh.com for asyncssh, with fewer objects and copies.

asyncssh 2.24.1's shims build a new ``AESGCM`` per packet, and for chacha20-poly1305 three
ChaCha20 contexts and a Poly1305 (about 25 µs per packet before any byte is encrypted),
then copy header, ciphertext and tag together twice. :func:`patch` replaces their
``encrypt_packet``/``decrypt_header``/``decrypt_packet`` with versions that keep one AESGCM
per key, derive the Poly1305 key and the payload keystream from one ChaCha20 context, and
write header, ciphertext and tag into one buffer. The wire format is unchanged (the tests
and benches talk to OpenSSH both ways). Installed through
:func:`meshssh_common.ssh_packets.install`, which also makes the send path accept the
``(packet, b"")`` these return.

Example::

    ssh_aead.patch()
"""

from __future__ import annotations

from typing import Any

from asyncssh import encryption as _encryption
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

__all__ = ["AEAD", "patch"]

AEAD = (_encryption.GCMEncryption, _encryption.ChachaEncryption)  # need no SSH_MSG_IGNORE
_TAG = 16
_CTR_0 = bytes(8)
_ZEROS_64 = bytes(64)


def patch() -> None:
    """Swap the AEAD shims' packet methods for the ones below."""
    gcm: Any = _encryption.GCMEncryption
    gcm.encrypt_packet = _gcm_encrypt_packet
    gcm.decrypt_packet = _gcm_decrypt_packet
    chacha: Any = _encryption.ChachaEncryption
    chacha.encrypt_packet = _chacha_encrypt_packet
    chacha.decrypt_header = _chacha_decrypt_header
    chacha.decrypt_packet = _chacha_decrypt_packet


def _aesgcm(cipher: Any) -> AESGCM:
    aead: AESGCM | None = getattr(cipher, "_mesh_aead", None)
    if aead is None:
        aead = cipher._mesh_aead = AESGCM(cipher._key)
    return aead


def _gcm_encrypt_packet(self: Any, seq: int, header: bytes, packet: bytes) -> tuple[Any, bytes]:
    """Header, ciphertext and tag in one buffer (no MAC to append)."""
    cipher = self._cipher
    out = bytearray(len(header) + len(packet) + _TAG)
    out[: len(header)] = header
    _aesgcm(cipher).encrypt_into(cipher._iv, packet, header, memoryview(out)[len(header) :])
    cipher._update_iv()
    return out, b""


def _gcm_decrypt_packet(
    self: Any, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
) -> bytes | None:
    cipher = self._cipher
    sealed = b"".join((memoryview(first)[header_len:], rest, mac))
    try:
        plain = _aesgcm(cipher).decrypt(cipher._iv, sealed, first[:header_len])
    except InvalidTag:
        plain = None
    cipher._update_iv()
    return plain


def _chacha_stream(key: bytes, seq: int) -> Any:
    return Cipher(ChaCha20(key, _CTR_0 + seq.to_bytes(8, "big")), None).encryptor()


def _chacha_encrypt_packet(self: Any, seq: int, header: bytes, packet: bytes) -> tuple[Any, bytes]:
    """Header, ciphertext and tag in one buffer: two ChaCha20 streams and one Poly1305."""
    cipher = self._cipher
    n = len(header)
    out = bytearray(n + len(packet) + _TAG)
    view = memoryview(out)
    view[:n] = _chacha_stream(cipher._adkey, seq).update(header)
    stream = _chacha_stream(cipher._key, seq)
    mac = Poly1305(stream.update(_ZEROS_64)[:32])  # block 0 is the Poly1305 key; data: 1..
    stream.update_into(packet, view[n : n + len(packet)])
    mac.update(view[: n + len(packet)])
    view[n + len(packet) :] = mac.finalize()
    return out, b""


def _chacha_decrypt_header(
    self: Any, seq: int, first_block: bytes, header_len: int
) -> tuple[bytes, bytes]:
    stream = _chacha_stream(self._cipher._adkey, seq)
    return first_block, stream.update(first_block[:header_len])


def _chacha_decrypt_packet(
    self: Any, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
) -> bytes | None:
    stream = _chacha_stream(self._cipher._key, seq)
    poly = Poly1305(stream.update(_ZEROS_64)[:32])
    poly.update(first)
    poly.update(rest)
    try:
        poly.verify(bytes(mac))
    except InvalidSignature:
        return None
    plain: bytes = stream.update(b"".join((memoryview(first)[header_len:], rest)))
    return plain
