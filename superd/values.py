"""Converters from YAML values to the typed values superd uses.

Each converter is a small pure function taking the value YAML produced and
returning the checked value, or raising ValueError with a message that quotes
the bad input.  None of them knows about files, lines or keys: config.py adds
those.  Addresses are parsed here too, into `Address` objects that listeners
bind and that the ready-file prints.
"""

import ipaddress
import math
import re
import socket
from dataclasses import dataclass

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class Address:
    """One listen address.  kind is "inet" or "unix".

    For inet, host is a numeric IPv4 or IPv6 address ("" for a bare PORT,
    which binds every address, dual-stack where IPv6 exists); for unix,
    path is absolute.  `text` is the spelling users see in logs.
    """

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_v6(self):
        return ":" in self.host

    @property
    def text(self):
        if self.kind == "unix":
            return "unix:" + self.path
        if self.host == "":
            return str(self.port)
        if self.is_v6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def boolean(value):
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


def string(value):
    if isinstance(value, str) and value:
        return no_nul(value)
    raise ValueError(f"expected a non-empty string, got {value!r}")


def no_nul(text):
    """text, unless it holds a NUL byte, which no argv, environment or path can carry."""
    if "\0" in text:
        raise ValueError(f"a NUL byte cannot be passed to a program: {text!r}")
    return text


def string_list(value):
    """A list of strings (numbers taken as written); a YAML boolean is refused:
    an unquoted yes, no, on or off is one, and its text would be lost."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list of strings, got {value!r}")
    for item in value:
        if isinstance(item, bool):
            raise ValueError(f"{item!r} in {value!r} is a YAML boolean: quote it "
                             "(yes, no, on, off, true and false unquoted are booleans)")
        if not isinstance(item, (str, int, float)):
            raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(no_nul(str(v)) for v in value)


def env_mapping(value):
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: value, got {value!r}")
    out = []
    for name, val in value.items():
        out.append((env_name(name), scalar_text(val)))
    return tuple(out)


def env_name(value):
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return value
    raise ValueError(f"not an environment variable name: {value!r}")


def env_names(value):
    return tuple(env_name(v) for v in string_list(value))


def scalar_text(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (str, int, float)):
        return no_nul(str(value))
    raise ValueError(f"expected a string or number, got {value!r}")


def is_service_name(value):
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", value) is not None


def name_or_id(value):
    """A user or group: a name, or a numeric id (YAML may read it as a number)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return string(value)


def seconds_or_zero(value):
    """Seconds; 0 switches the limit off (so a service can undo a default)."""
    if value == 0 and not isinstance(value, bool):
        return 0.0
    if _finite_above_zero(value):
        return float(value)
    raise ValueError(f"expected 0 (no limit) or a number of seconds above 0, got {value!r}")


def positive_int(value):
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"expected a whole number above 0, got {value!r}")


def duration(value):
    """Seconds, as a finite number above 0."""
    if _finite_above_zero(value):
        return float(value)
    raise ValueError(f"expected a number of seconds above 0, got {value!r}")


def _finite_above_zero(value):
    """A YAML number (not a boolean) above 0 and below infinity (.inf and .nan are not)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and value > 0 and math.isfinite(value))


def size(value):
    """A byte count: 512, "64K", "1M", "2G"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", value.upper())
        if m:
            return int(m.group(1)) * SIZE_SUFFIXES[m.group(2)]
    raise ValueError(f"expected a size such as 4096, 64K, 1M or 2G, got {value!r}")


def choice(*allowed):
    def convert(value):
        if value in allowed:
            return value
        raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
    return convert


def stderr_target(value):
    """inherit | log | null; YAML reads a bare `null` as None, which means null."""
    return choice("inherit", "log", "null")("null" if value is None else value)


def number(value):
    if _finite_above_zero(value):
        return float(value)
    raise ValueError(f"expected a number above 0, got {value!r}")


def network(value):
    """An address or CIDR network: 10.0.0.0/8, 192.0.2.7, ::1, 2001:db8::/32."""
    text = str(value).strip() if isinstance(value, (str, int)) else None
    if not text:
        raise ValueError(f"expected an address or CIDR network, got {value!r}")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an address or CIDR network: {value!r}") from None
    if net.version == 6 and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        v4 = net.network_address.ipv4_mapped
        return ipaddress.ip_network(f"{v4}/{net.prefixlen - 96}", strict=False)
    return net


def network_list(value):
    if value is None:
        return ()
    if not isinstance(value, list):
        value = [value]
    return each(network, value)


def each(convert, items):
    """convert applied to every item; a ValueError names every bad one, not
    only the first (--check promises every error)."""
    out, errors = [], []
    for item in items:
        try:
            out.append(convert(item))
        except ValueError as err:
            errors.append(str(err))
    if errors:
        raise ValueError("; ".join(errors))
    return tuple(out)


def v6_prefix(value):
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 128:
        return value
    raise ValueError(f"expected a prefix length from 1 to 128, got {value!r}")


def window(*required, optional=()):
    """A mapping such as {limit: 20, per: 60}: limit a whole number, the rest seconds."""
    def convert(value):
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with {', '.join(required)}, got {value!r}")
        unknown = set(value) - set(required) - set(optional)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                             f"expected {', '.join(required + optional)}")
        missing = [k for k in required if k not in value]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        out = {"limit": positive_int(value["limit"])}
        for key in required + optional:
            if key != "limit" and key in value:
                out[key] = duration(value[key])
        return out
    return convert


RLIMIT_MAX = (1 << 63) - 1       # what setrlimit takes from Python (and prlimit parses)
RLIMIT_KINDS = {"nofile": "count", "nproc": "count", "as": "size", "data": "size",
                "stack": "size", "fsize": "size", "core": "size", "cpu": "seconds"}


def rlimits(value):
    """{nofile: 1024, as: 1G, cpu: 60, core: 0, ...} -> sorted ((name, int or "unlimited"), ...)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping such as {{nofile: 1024, as: 1G}}, got {value!r}")
    return tuple(sorted(each(_rlimit, value.items())))


def _rlimit(entry):
    """(name, limit) of one rlimits entry; see rlimits."""
    name, limit = entry
    kind = RLIMIT_KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown limit {name!r}; expected one of {', '.join(RLIMIT_KINDS)}")
    if limit == "unlimited":
        return name, "unlimited"
    if kind == "size":
        limit = size(limit)
    elif not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0):
        raise ValueError(f"{name}: expected a whole number or 'unlimited', got {limit!r}")
    if limit > RLIMIT_MAX:
        raise ValueError(f"{name}: {limit} is above the largest limit, {RLIMIT_MAX}; "
                         "say 'unlimited'")
    return name, limit


def port_number(text):
    if not re.fullmatch(r"\d{1,5}", text) or int(text) > 65535:
        raise ValueError(f"bad port {text!r}: expected 0 to 65535")
    return int(text)


SERVICE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9+_.-]*")


def port(text):
    """A port number, or a service name /etc/services gives a port (daytime, http),
    as inetd.conf names them: looked up once, here, never per connection."""
    if not SERVICE_NAME.fullmatch(text):
        return port_number(text)
    try:
        return socket.getservbyname(text)
    except (OSError, UnicodeError):
        raise ValueError(f"bad port {text!r}: not a number, nor a service name in /etc/services") from None


def address(value):
    """Parse PORT | HOST:PORT | [V6]:PORT | unix:/path (path made absolute later).
    PORT may be a name from /etc/services."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an address such as 8080, 127.0.0.1:8080, [::1]:8080 or unix:/path, got {value!r}")
    if value.startswith("unix:"):
        if len(value) == 5 or "\0" in value:
            raise ValueError(f"bad unix socket address {value!r}")
        return Address("unix", path=value[5:])
    if value.isdigit():
        return Address("inet", "", port_number(value))
    if SERVICE_NAME.fullmatch(value):
        try:
            return Address("inet", "", port(value))
        except ValueError:
            raise ValueError(f"cannot parse address {value!r}: not a port, nor a service name in "
                             "/etc/services (expected PORT, NAME, HOST:PORT, [V6]:PORT or unix:/path)") from None
    m = re.fullmatch(r"\[([^\]]+)\]:([^:]+)", value)
    if m:
        host, service = m.group(1), m.group(2)
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad IPv6 address in {value!r}") from None
        return Address("inet", str(ip), port(service))
    host, sep, service = value.rpartition(":")
    if not sep or ":" in host:
        raise ValueError(f"cannot parse address {value!r}: expected PORT, HOST:PORT, [V6]:PORT or unix:/path")
    if host in ("localhost", "*"):
        host = "127.0.0.1" if host == "localhost" else "0.0.0.0"
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"bad host in {value!r}: expected a numeric IPv4 address, "
                         "[IPv6], localhost or *") from None
    return Address("inet", str(ip), port(service))


def address_list(value):
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected at least one address")
    return tuple(address(v) for v in items)
