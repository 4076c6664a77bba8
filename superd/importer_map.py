"""Conversions `superd import` shares between inetd.conf and xinetd.

Small pure functions from what those files say to superd values; each
raises ValueError with a message fit for a warning.  Ports are looked up in
/etc/services here, at import, so the services.yaml written names numbers.
"""

import ipaddress
import os
import re
import socket

from superd.handlers_path import INTERNAL

# The classic services both inetds run inside themselves, by port; superd
# runs its bundled handler of the same name (internal: NAME).
INTERNAL_BY_PORT = {7: "echo", 9: "discard", 13: "daytime", 19: "chargen", 37: "time"}

# tcpd(8) runs argv[0] from here when argv[0] is not a path (Debian's build).
TCPD_DAEMON_DIR = "/usr/sbin"

TCPD_WHY = ("hosts.allow and hosts.deny are not read: only_from and no_access "
            "do that here, before any program starts")


def port_of(name, protocol):
    """A port number, or the port /etc/services gives name for protocol."""
    if re.fullmatch(r"\d{1,5}", name):
        if int(name) > 65535:
            raise ValueError(f"port {name} is above 65535")
        return int(name)
    try:
        return socket.getservbyname(name, protocol)
    except (OSError, UnicodeError):
        raise ValueError(f"{name}/{protocol} is not in /etc/services: give a port") from None


def internal_name(name, port):
    """The bundled handler for an inetd or xinetd internal service, or None."""
    if name in INTERNAL and name in INTERNAL_BY_PORT.values():
        return name
    return INTERNAL_BY_PORT.get(port)


def host_text(text):
    """A numeric address as superd writes it ('localhost' and '*' as superd reads them)."""
    if text == "localhost":
        return "127.0.0.1"
    if text in ("", "*"):
        return ""
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        raise ValueError(f"{text!r} is not a numeric address (superd never resolves names)") from None


def listen_text(host, port, family):
    """An address for `listen`: family 4 or 6 picks the wildcard when host is ""; 46: both."""
    if not host:
        host = {4: "0.0.0.0", 6: "::", 46: ""}[family]
    if not host:
        return str(port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def network(token):
    """An xinetd only_from / no_access entry as a list of CIDR networks.

    xinetd reads 0.0.0.0 as every address, trailing .0 parts of an IPv4
    address as wildcards (10.1.0.0 is 10.1/16), and a.b.c.{d,e} as several
    addresses.  A host or network name raises: superd matches numbers only.
    """
    written = token
    if token in ("0.0.0.0", "0"):
        return ["0.0.0.0/0", "::/0"]
    if token == "localhost":
        return ["127.0.0.1/32", "::1/128"]
    factor = re.fullmatch(r"((?:\d{1,3}\.){0,3})\{([\d,\s]+)\}", token)
    if factor:
        return [n for last in factor.group(2).split(",") if last.strip()
                for n in network(factor.group(1) + last.strip())]
    if re.fullmatch(r"(\d{1,3}\.){1,3}\d{1,3}", token):
        parts = token.split(".") + ["0"] * (3 - token.count("."))
        kept = 4
        while parts[kept - 1] == "0":
            kept -= 1
        token = ".".join(parts) + f"/{8 * kept}"
    try:
        return [str(ipaddress.ip_network(token, strict=False))]
    except ValueError:
        raise ValueError(f"{written!r} is not a numeric address or network "
                         "(superd does not resolve names)") from None


def networks(tokens):
    """(CIDR list, tokens that are not numeric) for only_from / no_access."""
    found, names = [], []
    for token in tokens:
        try:
            found.extend(n for n in network(token) if n not in found)
        except ValueError:
            names.append(token)
    return found, names


# xinetd rlimit_* attribute: superd rlimits name
RLIMITS = {"rlimit_as": "as", "rlimit_cpu": "cpu", "rlimit_data": "data",
           "rlimit_stack": "stack", "rlimit_files": "nofile", "rlimit_core": "core"}


def rlimit(attribute, token):
    """(name, value) for superd's rlimits from xinetd's rlimit_NAME = VALUE."""
    name = RLIMITS[attribute]
    if token.upper() == "UNLIMITED":
        return name, "unlimited"
    m = re.fullmatch(r"(\d+)([KkMm]?)", token)
    if not m:
        raise ValueError(f"expected a number or UNLIMITED, got {token!r}")
    if m.group(2) and name in ("cpu", "nofile"):
        raise ValueError(f"{attribute} is a count, not a size: {token!r}")
    return name, int(m.group(1)) if not m.group(2) else f"{m.group(1)}{m.group(2).upper()}"


def whole_number(token, what):
    if re.fullmatch(r"\d{1,9}", token) and int(token) > 0:
        return int(token)
    raise ValueError(f"{what}: expected a whole number above 0, got {token!r}")


def seconds(token, what):
    if re.fullmatch(r"\d{1,9}(\.\d+)?", token) and float(token) > 0:
        return int(token) if token.isdigit() else float(token)
    raise ValueError(f"{what}: expected a number above 0, got {token!r}")


def unwrap_tcpd(program, argv):
    """(program, args, wrapped) with tcpd(8) taken out: tcpd runs argv[0] (from
    TCPD_DAEMON_DIR unless it is a path) with the rest, after reading
    hosts.allow; superd runs that program itself."""
    if os.path.basename(program) != "tcpd" or not argv:
        return program, list(argv[1:]), False
    real = argv[0] if argv[0].startswith("/") else os.path.join(TCPD_DAEMON_DIR, argv[0])
    return real, list(argv[1:]), True


def env_pairs(tokens):
    """({NAME: value}, bad tokens) from xinetd's env = NAME=value ..."""
    pairs, bad = {}, []
    for token in tokens:
        name, sep, value = token.partition("=")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            pairs[name] = value
        else:
            bad.append(token)
    return pairs, bad


def service_name(text):
    """text as a superd service name (letters, digits, . _ -; 64 at most)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip("._-")[:64]
    return name or "service"
