"""The PROXY protocol header (HAProxy's v1 text and v2 binary forms).

`parse(data, accept)` looks at the bytes received so far (peeked, not
consumed) and returns a `Header` once a whole header is there, None while
more bytes are needed, or raises `ProxyError` naming what is wrong.
`Header.length` is exactly how many bytes the header occupies, so the
caller consumes those and not one byte of the payload behind them.

Decisions: LOCAL (v2), UNKNOWN (v1) and the UNSPEC and UNIX families carry
no client IP; for them the connection's own addresses stand.  LOCAL is
marked (`Header.local`): it is the balancer's health check, not a client.  TLVs (v2) are
skipped.  A header longer than MAX_HEADER is refused.  An IPv4-mapped IPv6
address (::ffff:a.b.c.d) is reported as the IPv4 address, as superd reports
such a client on a dual-stack listener.
"""

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107                 # the spec's longest v1 line, CRLF included
MAX_HEADER = 4096            # v2: 16 fixed bytes plus addresses and TLVs


class ProxyError(Exception):
    """A header that is missing, malformed or too long (the client's fault)."""


@dataclass(frozen=True)
class Header:
    length: int              # bytes to consume
    version: int             # 1 or 2
    source: tuple = None     # (ip text, port) of the original client, or None
    destination: tuple = None
    local: bool = False      # v2 LOCAL: the balancer's own connection (a health check)


def parse(data, accept="any"):
    if _could_be(data, V2_SIGNATURE) and accept in ("v2", "any"):
        return _parse_v2(data) if len(data) >= 16 else None
    if _could_be(data, V1_PREFIX) and accept in ("v1", "any"):
        return _parse_v1(data) if len(data) >= len(V1_PREFIX) else None
    raise ProxyError(f"no PROXY {'header' if accept == 'any' else accept + ' header'}")


def _could_be(data, prefix):
    n = min(len(data), len(prefix))
    return data[:n] == prefix[:n]


def _parse_v1(data):
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyError("v1 header longer than 107 bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyError("v1 header not ended by CRLF")
        return None
    fields = data[:end].split(b" ")
    if fields[1:2] == [b"UNKNOWN"]:
        return Header(end + 2, 1)
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyError("malformed v1 header")
    version = 4 if fields[1] == b"TCP4" else 6
    src = _ip(fields[2], version)
    dst = _ip(fields[3], version)
    return Header(end + 2, 1, (src, _port(fields[4])), (dst, _port(fields[5])))


def _ip(raw, version):
    try:
        ip = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyError("bad address in v1 header") from None
    if ip.version != version:
        raise ProxyError("address family does not match in v1 header")
    return _text(ip)


def _text(ip):
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _port(raw):
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[:1] == b"0") or int(raw) > 65535:
        raise ProxyError("bad port in v1 header")
    return int(raw)


# v2 family byte -> (address block length, unpack format, ip version)
_V2_FAMILIES = {
    0x11: (12, "!4s4sHH", 4), 0x12: (12, "!4s4sHH", 4),
    0x21: (36, "!16s16sHH", 6), 0x22: (36, "!16s16sHH", 6),
    0x31: (216, None, None), 0x32: (216, None, None), 0x00: (0, None, None),
}


def _parse_v2(data):
    ver_cmd, family, length = struct.unpack("!BBH", data[12:16])
    if ver_cmd >> 4 != 2:
        raise ProxyError("unsupported v2 version")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyError("unknown v2 command")
    if 16 + length > MAX_HEADER:
        raise ProxyError(f"v2 header of {16 + length} bytes is too long")
    if len(data) < 16 + length:
        return None
    if command == 0:                       # LOCAL: a health check by the balancer itself
        return Header(16 + length, 2, local=True)
    if family not in _V2_FAMILIES:
        raise ProxyError("unknown v2 address family")
    need, fmt, version = _V2_FAMILIES[family]
    if length < need:
        raise ProxyError("v2 address block too short")
    if fmt is None:                        # UNSPEC or UNIX: no IP to report
        return Header(16 + length, 2)
    src, dst, sport, dport = struct.unpack(fmt, data[16:16 + need])
    make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return Header(16 + length, 2, (_text(make(src)), sport), (_text(make(dst)), dport))
