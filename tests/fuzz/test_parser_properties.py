"""Property tests of every parser that reads untrusted input (time-bounded: 200 examples
each, no deadline): whatever the input, only the parser's typed error comes out.

The targets are those of ``fuzz/targets.py`` (the same functions atheris runs in ``make
fuzz``); here hypothesis feeds them raw bytes and structure-aware inputs, and the inputs the
fuzzers once crashed on stay as explicit examples.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import example, given, settings
from hypothesis import strategies as st

_PATH = Path(__file__).resolve().parents[2] / "fuzz" / "targets.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshssh_fuzz_targets", _PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


T = _load()
BOUNDED = settings(max_examples=200, deadline=None)
_SPEC_CHARS = st.sampled_from(list(":[]/\\*0123456789abcdefxyz.-_ \t\n\0²\udcff%,@"))
_spec_text = st.lists(_SPEC_CHARS, max_size=40).map("".join)


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@BOUNDED
@given(st.integers(0, 255), st.binary(max_size=300))
@example(5, b'{"type":"policy.heartb\xa1at.v1","peer_id":"p-1","sent_at":1.0}')  # crashed once
def test_wire_decoding_raises_only_wire_errors(kind: int, data: bytes) -> None:
    T.wire(bytes([kind]) + data)


@BOUNDED
@given(
    st.integers(0, 255),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
        ),
        max_leaves=20,
    ),
)
def test_wire_decoding_of_any_json_raises_only_wire_errors(kind: int, value: object) -> None:
    T.wire(bytes([kind]) + json.dumps(value).encode())


@BOUNDED
@given(st.binary(max_size=120))
def test_proxy_v2_raises_only_protocol_errors(tail: bytes) -> None:
    T.proxy_v2(tail)
    T.proxy_v2(b"\r\n\r\n\x00\r\nQUIT\n" + tail)  # behind a valid signature


@BOUNDED
@given(st.booleans(), _spec_text)
@example(True, "[::1]:0:db:54\udccd\udcc3")  # crashed once: surrogates reached getservbyname
@example(False, "8080:h:²")  # crashed once: "²".isdigit() but int("²") fails
@example(True, "\0\0\udcfb/tmp/s:\udcfb:1")  # crashed once: a socket path with surrogates
def test_forward_specs_raise_only_forward_spec_errors(remote: bool, spec: str) -> None:
    T.forward_spec(bytes([int(remote)]) + _b(spec))


@BOUNDED
@given(st.text(max_size=300) | _spec_text)
def test_ssh_config_host_names_never_escape_the_match_line(name: str) -> None:
    T.ssh_config_host(_b(name))


@BOUNDED
@given(st.text(max_size=64) | _spec_text)
def test_user_names_raise_only_refusals(name: str) -> None:
    T.user_name(_b(name))


_json_values = st.none() | st.booleans() | st.integers() | st.text(max_size=16)


@BOUNDED
@given(
    st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "b64", "x"]) | st.text(),
        _json_values | st.lists(_json_values, max_size=3),
        max_size=5,
    ),
    st.binary(max_size=64),
)
@example({"alg": "EdDSA"}, b"\x89")
def test_jwt_headers_raise_only_token_rejections(header: dict[str, object], junk: bytes) -> None:
    T.jwt(b"\x01" + json.dumps(header).encode() + b"\0" + junk)
    T.jwt(b"\x01" + junk)  # a header that is not JSON (or not UTF-8)


@BOUNDED
@given(st.text(max_size=200))
def test_whole_tokens_raise_only_token_rejections(token: str) -> None:
    T.jwt(b"\x00" + _b(token))


@BOUNDED
@given(_spec_text, _spec_text)
def test_permit_open_raises_only_its_error_and_round_trips(spec: str, dest: str) -> None:
    T.permit_open(_b(spec.replace("\n", " ") + "\n" + dest))


_FRAME = st.fixed_dictionaries(
    {"type": st.sampled_from(["resize", "Resize", "paste"])},
    optional={
        "cols": st.one_of(st.integers(-5, 2000), st.floats(), st.booleans(), st.text(max_size=3)),
        "rows": st.one_of(st.integers(-5, 2000), st.none(), st.lists(st.integers(), max_size=2)),
    },
)


@BOUNDED
@given(st.one_of(st.binary(max_size=200), _FRAME.map(lambda f: json.dumps(f).encode())))
def test_terminal_frames_never_raise_and_resize_only_in_range(data: bytes) -> None:
    T.terminal_frame(data)


def test_every_target_has_a_property_here_and_seeds() -> None:
    names = {n.removeprefix("test_").split("_")[0] for n in globals() if n.startswith("test_")}
    for target in T.TARGETS:
        assert target.split("_")[0] in names, target
        assert T.seeds()[target], target
        for seed in T.seeds()[target]:
            T.TARGETS[target](seed)


def test_a_final_newline_is_refused_where_a_pattern_ends_in_dollar() -> None:
    # Found by fuzzing the drop-in's host names: Python's "$" also matches before a final
    # newline; ids, names and subject tokens would have admitted "name\n".
    import msgspec
    import pytest

    from meshssh_agent.ssh_config import is_valid_host
    from meshssh_common.wire.base import PeerId
    from meshssh_common.wire.peer import PeerName

    assert not is_valid_host("0\n")
    assert not is_valid_host("demo-server\n")
    for typ in (PeerId, PeerName):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(b'"peer-1\\n"', type=typ)
