"""``meshssh-policy init``: make the bus's operator, accounts and service credentials once.

Example::

    meshssh-policy init --dir /secrets/bus --tls-host nats --tls-host 127.0.0.1
    meshssh-policy init --dir /secrets/bus --rotate authn   # new authn.creds (see docs/security.md)
    meshssh-policy init --dir /secrets/bus --rotate map-signing   # new map key; restart policy

``--rotate map-signing`` / ``--rotate jwks-signing`` make a new document signing key and keep
the old one as ``<key>.pem.previous`` (it endorses the new one until peers renewed their pins);
on a bus directory made before signed maps they create the first key.

Exit 0 on success, 2 on a bad flag or when the directory already holds keys (without
``--rotate``). The files are listed in :mod:`meshssh_common.bus_keys` and docs/security.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from meshssh_common.bus_keys import SERVICE_ROLES, SIGNING_KEYS, BusKeys, make_signing_key
from meshssh_common.nats_jwt import read_creds

__all__ = ["init_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshssh-policy init",
        description="make the NATS operator, accounts and service credentials (once)",
    )
    p.add_argument("--dir", type=Path, required=True, help="directory to write (mode 0700)")
    p.add_argument(
        "--tls-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also make a CA and a server certificate for NAME (repeatable; IPs allowed)",
    )
    p.add_argument(
        "--rotate",
        choices=(*SERVICE_ROLES, *SIGNING_KEYS),
        action="append",
        default=[],
        help="issue a new key and creds for this service in an existing directory "
        "(repeatable); prints the old public key, which policy revokes (docs/security.md); "
        "map-signing/jwks-signing: a new document signing key (restart policy/authn)",
    )
    return p


def init_main(argv: Sequence[str]) -> int:
    """Run ``meshssh-policy init``; returns the exit code."""
    args = _parser().parse_args(list(argv))
    directory: Path = args.dir
    if args.rotate:
        try:
            keys = BusKeys.load(directory)
        except (OSError, ValueError, KeyError) as e:
            sys.stderr.write(f"meshssh-policy init: cannot load {directory}: {e}\n")
            return 2
        for role in args.rotate:
            if role in SIGNING_KEYS:
                public = make_signing_key(directory, role, rotate=True)
                sys.stdout.write(f"rotated {role}: new public key {public}\n")
                continue
            old = read_creds(keys.creds(role)).public_key
            keys.issue_service(role)
            sys.stdout.write(f"rotated {role}: revoke {old}\n")
        return 0
    try:
        keys = BusKeys.create(directory, tls_hosts=args.tls_host)
    except FileExistsError as e:
        sys.stderr.write(f"meshssh-policy init: {e} (use --rotate for new service creds)\n")
        return 2
    except ValueError as e:
        sys.stderr.write(f"meshssh-policy init: {e}\n")
        return 2
    sys.stdout.write(f"bus keys in {directory}: account {keys.account}\n")
    return 0
