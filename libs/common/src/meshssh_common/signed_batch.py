"""One signature for the documents a process asks to sign in the same event-loop turn.

Policy's publish workers (64 at a time) each sign a map before writing it; signing one by one
cost a fifth of policy's CPU in a change that reaches 1,000 peers. :class:`BatchSigner` holds
each request until the turn ends, then signs everything asked for in it at once
(:meth:`~meshssh_common.signed_doc.Signer.sign_many`: one Ed25519 signature over a hash tree),
so the workers need no coordination of their own. A batch of one is signed as usual.

Example::

    batch = BatchSigner(signer)
    doc = await batch.sign(payload)          # a SignedDoc, perhaps with a BatchProof
"""

from __future__ import annotations

import asyncio

from meshssh_common.signed_doc import Signer
from meshssh_common.wire import SignedDoc

__all__ = ["BatchSigner"]


class BatchSigner:
    """Signs with ``signer``, batching the requests of one event-loop turn."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.signatures = 0  # made so far (one per batch)
        self._pending: list[tuple[bytes, asyncio.Future[SignedDoc]]] = []

    async def sign(self, payload: bytes) -> SignedDoc:
        """``payload``'s signed envelope, signed with whatever else this turn asked for.

        Raises:
            Exception: what signing raised (every request of the batch gets it).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SignedDoc] = loop.create_future()
        self._pending.append((payload, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            docs = self.signer.sign_many([payload for payload, _ in pending])
        except Exception as e:  # a broken key: every waiter learns it
            for _, future in pending:
                if not future.done():
                    future.set_exception(e)
            return
        self.signatures += 1
        for (_, future), doc in zip(pending, docs, strict=True):
            if not future.done():  # a cancelled waiter
                future.set_result(doc)
