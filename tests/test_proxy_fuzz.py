"""PROXY header parser under generated input (issue 18, item 4): every byte
string is a header, a request for more bytes, or a ProxyError; never another
exception, a length past the data, or an answer that changes as bytes arrive."""

import struct

from hypothesis import given, settings, strategies as st

from superd import proxy

FUZZ = settings()   # examples from the profile in conftest.py

# TLV types of the PROXY v2 spec, plus unassigned ones.
TLV_TYPES = st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x20, 0x21, 0x22, 0x23, 0x24,
                             0x25, 0x30, 0xE0, 0xEE, 0xEF, 0x00, 0xFF])


@st.composite
def v2_headers(draw):
    """v2 headers: any version/command nibble, family, address block and TLVs,
    with a length field that is honest, short, or past the end."""
    ver_cmd = draw(st.sampled_from([0x20, 0x21, 0x22, 0x2F, 0x10, 0x30])) \
        if draw(st.booleans()) else draw(st.integers(0, 255))
    family = draw(st.sampled_from([0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32, 0x13, 0x44]))
    body = draw(st.binary(max_size=240))
    for _ in range(draw(st.integers(0, 3))):
        value = draw(st.binary(max_size=40))
        declared = draw(st.sampled_from([len(value), len(value) + 5, 0, 0xFFFF]))
        body += bytes([draw(TLV_TYPES)]) + struct.pack("!H", declared) + value
    length = draw(st.sampled_from([len(body), max(0, len(body) - 3), len(body) + 7,
                                   draw(st.integers(0, 0xFFFF))]))
    tail = draw(st.binary(max_size=20))
    return proxy.V2_SIGNATURE + bytes([ver_cmd, family]) + struct.pack("!H", length) + body + tail


V1_WORDS = st.sampled_from([b"PROXY", b"TCP4", b"TCP6", b"UNKNOWN", b"192.0.2.1", b"::1",
                            b"2001:db8::1", b"65535", b"65536", b"-1", b"0", b"01", b"1.2.3",
                            b"256.1.1.1", b"\x00", b"\xff", b"", b"  ", b"a" * 120])


@st.composite
def v1_headers(draw):
    words = draw(st.lists(V1_WORDS, max_size=8))
    end = draw(st.sampled_from([b"\r\n", b"\n", b"", b"\r", b"\r\nGET / HTTP/1.0\r\n"]))
    return b"PROXY " + b" ".join(words) + end


INPUT = st.one_of(st.binary(max_size=300), v2_headers(), v1_headers())


def _outcome(data, accept):
    try:
        return proxy.parse(data, accept)
    except proxy.ProxyError:
        return "error"


@FUZZ
@given(INPUT, st.sampled_from(["any", "v1", "v2"]))
def test_every_input_is_a_header_more_or_a_proxy_error(data, accept):
    result = _outcome(data, accept)
    if isinstance(result, proxy.Header):
        assert 0 < result.length <= len(data)
        assert result.length <= proxy.MAX_HEADER
        assert result.version in (1, 2)
        for address in (result.source, result.destination):
            assert address is None or (isinstance(address[0], str) and 0 <= address[1] <= 65535)


@FUZZ
@given(INPUT, st.sampled_from(["any", "v1", "v2"]), st.data())
def test_the_answer_does_not_change_as_bytes_arrive(data, accept, draw):
    """A header read in pieces gives what it gives read at once: a prefix of a
    complete header asks for more (or is already the same error)."""
    whole = _outcome(data, accept)
    cut = draw.draw(st.integers(0, len(data)))
    part = _outcome(data[:cut], accept)
    if isinstance(whole, proxy.Header):
        if cut >= whole.length:
            assert part == whole
        else:
            assert part is None, (data[:cut], part)
    if part is not None:                # a verdict on fewer bytes is final
        assert part == whole, (data[:cut], part, whole)
