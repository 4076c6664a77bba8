"""Shared helpers for the hostile tests of issue 4 (this module holds no tests).

Clients play many sources by binding to addresses of 127.0.0.0/8 before they
connect.  The usual handler is `ENV_SCRIPT`, a shell script (it starts in
about a millisecond): it writes the connection variables superd gave it, a
blank line, then echoes its input until EOF, so a test sees both who superd
said the client was and the payload exactly as the handler received it.

A connection superd refuses is closed without a byte: the client reads EOF
(or a reset, when it had sent bytes superd never read).  `talk` and `hold`
return None for that, the handler's answer otherwise.
"""

import errno
import os
import re
import socket
import struct
import time

import psutil

from conftest import TIMEOUT

ENV_NAMES = ("REMOTE_ADDR", "REMOTE_PORT", "TCPREMOTEIP", "TCPREMOTEPORT",
             "TCPLOCALIP", "TCPLOCALPORT", "REMOTE_HOST")
ENV_SCRIPT = ("printf '%s\\n' " + " ".join(f'"{n}=${n}"' for n in ENV_NAMES)
              + "\necho\nexec cat\n")


def shell_handler(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def env_handler(tmp_path):
    return shell_handler(tmp_path, "env.sh", ENV_SCRIPT)


def open_from(address, source=None, timeout=TIMEOUT, nodelay=False):
    """A connected socket to address, bound first to source (an IP) if given."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source is not None:
            sock.bind((source, 0))
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def read_until_eof(sock):
    """Everything until EOF; b"" if the peer reset the connection first."""
    chunks = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def parse_answer(raw):
    """(env dict, payload) from ENV_SCRIPT's output, or None for a refusal."""
    if not raw:
        return None
    head, sep, payload = raw.partition(b"\n\n")
    assert sep, f"not an answer from the env handler: {raw[:200]!r}"
    env = dict(line.split("=", 1) for line in head.decode().split("\n"))
    return env, payload


def answer_of(sock):
    """parse_answer of everything the handler on sock says until EOF."""
    return parse_answer(read_until_eof(sock))


def talk(address, payload=b"", source=None, timeout=TIMEOUT, before=b""):
    """Send before+payload, half-close, return parse_answer(all the handler said)."""
    with open_from(address, source, timeout) as sock:
        try:
            sock.sendall(before + payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return None
        except OSError as err:          # reset before the shutdown: ENOTCONN
            if err.errno != errno.ENOTCONN:
                raise
            return None
        return parse_answer(read_until_eof(sock))


def read_head(sock):
    """Read the env handler's head (up to the blank line); None if closed unserved."""
    buf = b""
    try:
        while b"\n\n" not in buf:
            data = sock.recv(4096)
            if not data:
                return None
            buf += data
    except ConnectionResetError:
        return None
    return parse_answer(buf)[0]


def hold(address, source=None, before=b""):
    """A connection whose handler is running (its head read), or None if refused.

    The handler lives until the caller half-closes or closes the socket.
    """
    sock = open_from(address, source)
    if before:
        sock.sendall(before)
    env = read_head(sock)
    if env is None:
        sock.close()
        return None
    return sock


def finish(sock):
    """Half-close a held connection and wait for its handler to end (EOF)."""
    sock.shutdown(socket.SHUT_WR)
    read_until_eof(sock)
    sock.close()


def cpu_seconds(pid):
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def exit_line(client_port):
    """Regex for the exit line of the handler that served the client on that port."""
    return rf"^exit service=\S+ client=\S+:{client_port} "


def line_index(log, pattern):
    """Index of the first log line matching pattern (the line must be there)."""
    rx = re.compile(pattern)
    for i, line in enumerate(list(log.lines)):
        if rx.search(line):
            return i
    raise AssertionError(f"no line matches {pattern!r}")


# -- PROXY protocol headers ------------------------------------------------------

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(src, dst, sport, dport):
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def proxy_v2(src=None, dst=None, sport=0, dport=0, command=1, tlv=b""):
    """A v2 header: PROXY (command 1) with TCP over IPv4/IPv6, or LOCAL (command 0)."""
    if src is None:
        family, block = 0x00, b""
    elif ":" in src:
        family = 0x21
        block = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                 + struct.pack("!HH", sport, dport))
    else:
        family = 0x11
        block = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    body = block + tlv
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def send_in_pieces(sock, data, cuts, gap=0.02):
    """Send data cut at the given offsets, one send per piece (TCP_NODELAY set
    on the socket), pausing `gap` s between pieces: a deliberately slow sender."""
    start = 0
    for cut in list(cuts) + [len(data)]:
        sock.sendall(data[start:cut])
        start = cut
        if start < len(data):
            time.sleep(gap)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))
