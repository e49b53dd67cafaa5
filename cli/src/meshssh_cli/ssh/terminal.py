"""The local terminal of ``meshssh ssh``: size, raw mode, and resize notifications.

Raw mode is OpenSSH's (no echo, no line editing, no signals from keys, no output
processing), restored on exit however the session ends. A resize is the ``SIGWINCH`` signal,
after which the new size is read from the terminal.

Example::

    with raw_mode(0):
        stop = on_resize(loop, 0, lambda size: chan.change_terminal_size(*size))
        ...
        stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import struct
import termios
import tty
from collections.abc import Callable, Iterator

__all__ = ["TermSize", "is_terminal", "on_resize", "raw_mode", "terminal_size"]

TermSize = tuple[int, int, int, int]  # columns, rows, pixel width, pixel height


def is_terminal(fd: int) -> bool:
    """True when ``fd`` is a terminal."""
    return os.isatty(fd)


def terminal_size(fd: int) -> TermSize:
    """The size of the terminal on ``fd`` (80x24 when it is not a terminal)."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return (80, 24, 0, 0)
    rows, cols, xpix, ypix = struct.unpack("HHHH", packed)
    return (cols or 80, rows or 24, xpix, ypix)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` in raw mode for the block; a no-op for a non-terminal."""
    if not is_terminal(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSADRAIN)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def on_resize(
    loop: asyncio.AbstractEventLoop, fd: int, callback: Callable[[TermSize], None]
) -> Callable[[], None]:
    """Call ``callback`` with the new size after each ``SIGWINCH``; returns the undo."""
    loop.add_signal_handler(signal.SIGWINCH, lambda: callback(terminal_size(fd)))

    def undo() -> None:
        loop.remove_signal_handler(signal.SIGWINCH)

    return undo
