"""meshssh common library: what every service and the CLI share (SPEC §1).

Modules, one noun each: :mod:`errors`, :mod:`codec`, :mod:`subjects`, :mod:`wire`,
:mod:`settings`, :mod:`logs`, :mod:`metrics`, :mod:`connection`, :mod:`rpc`, :mod:`kv`,
:mod:`http_server`, :mod:`ops_http`, :mod:`service`, :mod:`version`.
"""

from meshssh_common.version import VERSION

__all__ = ["VERSION"]
