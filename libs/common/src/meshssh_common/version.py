"""The meshssh version string, shared by every part (banner, metadata, micro services)."""

__all__ = ["VERSION"]

VERSION = "0.1.0"
