"""meshssh common library: what every service and the CLI share (SPEC §1).

Modules, one noun each: :mod:`errors`, :mod:`codec`, :mod:`subjects`, :mod:`wire`,
:mod:`settings`, :mod:`logs`, :mod:`metrics`, :mod:`connection`, :mod:`rpc`, :mod:`kv`,
:mod:`peer_map`, :mod:`tasks`, :mod:`oidc_device`, :mod:`audit_stream`, :mod:`http_server`,
:mod:`ops_http`, :mod:`service`, :mod:`version`, secrets (:mod:`secret_files`,
:mod:`fingerprint`), and the SSH and JWT pieces (:mod:`acl`, :mod:`host_keys`,
:mod:`jwt_validation`, :mod:`permit_open`, :mod:`ssh_auth`, :mod:`ssh_packets`...).
"""

from meshssh_common.version import VERSION

__all__ = ["VERSION"]
