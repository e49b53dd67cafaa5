"""The terminal modes of a ``pty-req`` (RFC 4254 §8), applied to the PTY like OpenSSH does.

The client sends the modes of its own terminal (erase character, echo, signals...) so that the
remote terminal behaves the same. Opcodes this platform has no flag for are skipped.

Example::

    apply_modes(slave_fd, {3: 8, 53: 1})   # VERASE = ^H, ECHO on
"""

from __future__ import annotations

import contextlib
import termios
from collections.abc import Mapping

__all__ = ["apply_modes"]

# opcode → name of a control character (index into cc)
_CHARS = {
    1: "VINTR",
    2: "VQUIT",
    3: "VERASE",
    4: "VKILL",
    5: "VEOF",
    6: "VEOL",
    7: "VEOL2",
    8: "VSTART",
    9: "VSTOP",
    10: "VSUSP",
    12: "VREPRINT",
    13: "VWERASE",
    14: "VLNEXT",
    18: "VDISCARD",
}
# opcode → (index of the flag word: 0 iflag, 1 oflag, 2 cflag, 3 lflag; flag name)
_FLAGS = {
    30: (0, "IGNPAR"),
    31: (0, "PARMRK"),
    32: (0, "INPCK"),
    33: (0, "ISTRIP"),
    34: (0, "INLCR"),
    35: (0, "IGNCR"),
    36: (0, "ICRNL"),
    37: (0, "IUCLC"),
    38: (0, "IXON"),
    39: (0, "IXANY"),
    40: (0, "IXOFF"),
    41: (0, "IMAXBEL"),
    42: (0, "IUTF8"),
    50: (3, "ISIG"),
    51: (3, "ICANON"),
    52: (3, "XCASE"),
    53: (3, "ECHO"),
    54: (3, "ECHOE"),
    55: (3, "ECHOK"),
    56: (3, "ECHONL"),
    57: (3, "NOFLSH"),
    58: (3, "TOSTOP"),
    59: (3, "IEXTEN"),
    60: (3, "ECHOCTL"),
    61: (3, "ECHOKE"),
    62: (3, "PENDIN"),
    70: (1, "OPOST"),
    71: (1, "OLCUC"),
    72: (1, "ONLCR"),
    73: (1, "OCRNL"),
    74: (1, "ONOCR"),
    75: (1, "ONLRET"),
    90: (2, "CS7"),
    91: (2, "CS8"),
    92: (2, "PARENB"),
    93: (2, "PARODD"),
}
_DISABLED = 255  # RFC 4254: a control character of 255 means "not used"


def apply_modes(fd: int, modes: Mapping[int, int]) -> None:
    """Set the modes the client sent on the terminal ``fd`` (unknown opcodes are ignored)."""
    if not modes:
        return
    with contextlib.suppress(termios.error, OSError):
        attrs = termios.tcgetattr(fd)
        cc = list(attrs[6])
        for opcode, value in modes.items():
            if opcode in _CHARS:
                index = getattr(termios, _CHARS[opcode], None)
                if index is not None and index < len(cc):
                    cc[index] = bytes([0 if value == _DISABLED else value & 0xFF])
            elif opcode in _FLAGS:
                word, name = _FLAGS[opcode]
                flag = getattr(termios, name, None)
                if flag is None:
                    continue
                if name in ("CS7", "CS8"):
                    if value:
                        attrs[2] = (attrs[2] & ~termios.CSIZE) | flag
                    continue
                attrs[word] = attrs[word] | flag if value else attrs[word] & ~flag
        attrs[6] = cc
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
