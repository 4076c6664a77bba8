"""Hostile tests (issue 4): the PROXY protocol header in front of a real superd.

The test plays the load balancer: it connects from 127.0.0.x and sends a v1
or v2 header naming some other client.  The env handler (see
test_protection_support) reports what superd told it and echoes the payload,
so every test checks both the addresses and that not one payload byte was
eaten.  A refused connection is closed unserved; `proxy_timeout` is longer
than the client's socket timeout wherever a test claims "refused at once".
"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_protection_support import (V2_SIGNATURE, answer_of, cpu_seconds, env_handler,
                                     finish, hold, line_index, open_from, proxy_v1, proxy_v2,
                                     read_head, read_until_eof, send_in_pieces, talk)

TRUSTED = "127.0.0.0/8"


def proxy_config(env, **extra):
    """A config with services any/v1/v2 (PROXY) and plain (no PROXY)."""
    common = f"server: {env}, proxy_from: [{TRUSTED}], proxy_timeout: 30"
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return f"""
services:
  any: {{listen: "127.0.0.1:0", proxy_protocol: any, {common}{more}}}
  v1: {{listen: "127.0.0.1:0", proxy_protocol: v1, {common}{more}}}
  v2: {{listen: "127.0.0.1:0", proxy_protocol: v2, {common}{more}}}
  plain: {{listen: "127.0.0.1:0", server: {env}}}
"""


@pytest.fixture
def proxied(superd, tmp_path):
    return superd(proxy_config(env_handler(tmp_path)))


def check_named(answer, src, sport, dst, dport, payload):
    assert answer is not None, "served"
    env, got = answer
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (src, str(sport))
    assert (env["TCPREMOTEIP"], env["TCPREMOTEPORT"], env["REMOTE_HOST"]) == (src, str(sport), src)
    assert (env["TCPLOCALIP"], env["TCPLOCALPORT"]) == (dst, str(dport))
    assert got == payload


HEADERS = [  # (service, header, src, sport, dst, dport)
    ("v1", proxy_v1("192.0.2.7", "198.51.100.9", 5555, 443), "192.0.2.7", 5555, "198.51.100.9", 443),
    ("any", proxy_v1("2001:db8::7", "2001:db8::1", 65535, 8443), "2001:db8::7", 65535, "2001:db8::1", 8443),
    ("v2", proxy_v2("192.0.2.8", "198.51.100.10", 1234, 80), "192.0.2.8", 1234, "198.51.100.10", 80),
    ("any", proxy_v2("2001:db8::8", "2001:db8::2", 4321, 25), "2001:db8::8", 4321, "2001:db8::2", 25),
    # TLVs (here a PP2_TYPE_ALPN and a PP2_TYPE_NOOP) are skipped
    ("v2", proxy_v2("192.0.2.9", "198.51.100.11", 7, 9, tlv=b"\x01\x00\x02h2\x04\x00\x03abc"),
     "192.0.2.9", 7, "198.51.100.11", 9),
    # a v4-mapped source is the plain IPv4 client
    ("v1", proxy_v1("::ffff:192.0.2.10", "::ffff:198.51.100.1", 10, 20), "192.0.2.10", 10, "198.51.100.1", 20),
]


@pytest.mark.parametrize("service, header, src, sport, dst, dport", HEADERS,
                         ids=[f"{h[0]}-{i}" for i, h in enumerate(HEADERS)])
def test_valid_header_names_the_original_client(proxied, service, header, src, sport, dst, dport):
    answer = talk(proxied.address(service), b"payload after the header", before=header)
    check_named(answer, src, sport, dst, dport, b"payload after the header")


@pytest.mark.parametrize("service, header", [("v1", b"PROXY UNKNOWN\r\n"),
                                             ("any", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")],
                         ids=["v1-unknown", "v1-unknown-with-junk"])
def test_unknown_keeps_the_connections_own_addresses(proxied, service, header):
    address = proxied.address(service)
    with open_from(address, "127.0.0.5") as sock:
        sock.sendall(header + b"health check")
        sock.shutdown(1)
        port = sock.getsockname()[1]
        answer = answer_of(sock)
    check_named(answer, "127.0.0.5", port, "127.0.0.1", address[1], b"health check")


@pytest.mark.parametrize("service, header", [("v2", proxy_v2(command=0)),
                                             ("any", proxy_v2("192.0.2.1", "192.0.2.2", 1, 2, command=0))],
                         ids=["v2-local", "v2-local-with-addresses"])
def test_a_local_header_is_a_health_check_no_handler_no_log_line(proxied, service, header):
    """HAProxy's checks (v2 LOCAL): counted, closed at once, nothing at info level.

    (This was served with the connection's own addresses, like UNKNOWN,
    before DESIGN.md's "Behind a load balancer" made it a health check.)"""
    address = proxied.address(service)
    with open_from(address, "127.0.0.5") as sock:
        sock.sendall(header)
        assert read_until_eof(sock) == b"", "closed: no handler answered"
    proxied.send(signal.SIGUSR1)
    proxied.log.wait_for(rf"^status service={service} ")
    assert proxied.log.count(r"client=127\.0\.0\.5") == 0, "nothing logged at info level"
    talk(address, b"x", before=proxy_v1("192.0.2.1", "192.0.2.2", 1, 2)
         if service == "any" else proxy_v2("192.0.2.1", "192.0.2.2", 1, 2))
    proxied.log.wait_for(r"^exit service=\S+ client=192\.0\.2\.1:1 ")
    assert proxied.log.count(r"^exit ") == 1, "only the real client got a handler"
    status = subprocess.run([str(Path(sys.executable).with_name("superdctl")), "--ready-file",
                             str(proxied.ready_path), "--json", "status"],
                            capture_output=True, text=True, timeout=30, check=True)
    counted = {s["name"]: s["health_checks"] for s in json.loads(status.stdout)["services"]}
    assert counted[service] == 1


BAD_HEADERS = [  # (service, bytes, id)
    ("any", b"GET / HTTP/1.0\r\n\r\n", "http-request"),
    ("any", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32), "tls-hello"),
    ("v2", proxy_v1("192.0.2.1", "192.0.2.2", 1, 2), "v1-on-v2-service"),
    ("v1", proxy_v2("192.0.2.1", "192.0.2.2", 1, 2), "v2-on-v1-service"),
    ("v1", b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "v1-too-long"),
    ("v1", b"PROXY TCP4 999.0.2.1 192.0.2.2 1 2\r\n", "v1-bad-address"),
    ("v1", b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n", "v1-family-mismatch"),
    ("v1", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 65536\r\n", "v1-bad-port"),
    ("v1", b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n", "v1-bare-lf"),
    ("v1", b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n", "v1-udp"),
    ("v2", V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "v2-version-3"),
    ("v2", V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "v2-command-15"),
    ("v2", V2_SIGNATURE + b"\x21\x11\xff\xff" + bytes(64), "v2-oversized"),
    ("v2", V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "v2-short-address-block"),
    ("v2", V2_SIGNATURE + b"\x21\x41\x00\x04" + bytes(4), "v2-unknown-family"),
    ("v2", b"\r\n\r\n\x00\r\nQUIZ\n" + bytes(20), "v2-bad-signature"),
]


@pytest.mark.parametrize("service, data", [b[:2] for b in BAD_HEADERS], ids=[b[2] for b in BAD_HEADERS])
def test_garbage_header_is_refused_at_once(proxied, service, data):
    with open_from(proxied.address(service), "127.0.0.6") as sock:
        sock.sendall(data + b"payload")     # no half-close: a refusal must not wait for one
        assert read_until_eof(sock) == b"", "closed unserved"
    proxied.log.wait_for(rf"^refused service={service} client=127\.0\.0\.6:\d+ conn=\d+ reason=proxy_malformed ")
    good = (proxy_v2 if service == "v2" else proxy_v1)("192.0.2.1", "192.0.2.2", 1, 2)
    check_named(talk(proxied.address(service), b"next", before=good),
                "192.0.2.1", 1, "192.0.2.2", 2, b"next")


@pytest.mark.parametrize("service, data", [
    ("v1", proxy_v1("192.0.2.1", "192.0.2.2", 1, 2)[:20]),
    ("v1", proxy_v1("192.0.2.1", "192.0.2.2", 1, 2)[:-1]),       # all but the LF of CRLF
    ("v2", proxy_v2("192.0.2.1", "192.0.2.2", 1, 2)[:7]),         # inside the signature
    ("v2", proxy_v2("192.0.2.1", "192.0.2.2", 1, 2)[:20]),        # inside the addresses
    ("any", b""),
], ids=["v1-half", "v1-no-lf", "v2-in-signature", "v2-in-addresses", "nothing"])
def test_truncated_header_then_close_is_refused(proxied, service, data):
    with open_from(proxied.address(service), "127.0.0.7") as sock:
        sock.sendall(data)
        sock.shutdown(1)
        assert read_until_eof(sock) == b""
    proxied.log.wait_for(rf"^refused service={service} client=127\.0\.0\.7:\d+ conn=\d+ reason=proxy_closed ")
    assert talk(proxied.address("plain"), b"plain")[1] == b"plain"


SPLITS = [  # (service, header maker, source, cuts in the header; None: one byte at a time)
    ("v1", proxy_v1, "192.0.2.21", [1, 6, 11, 25, 40]),
    ("v1", proxy_v1, "192.0.2.22", None),
    ("v2", proxy_v2, "192.0.2.23", [3, 12, 13, 16, 20, 27]),
    ("any", proxy_v2, "2001:db8::24", [5, 12, 16, 30, 51]),
]


@pytest.mark.parametrize("service, make, src, cuts", SPLITS, ids=["v1", "v1-bytewise", "v2", "v2-v6"])
def test_header_split_across_segments(proxied, service, make, src, cuts):
    dst = "2001:db8::2" if ":" in src else "198.51.100.2"
    header = make(src, dst, 2000, 20)
    cuts = list(range(1, len(header))) if cuts is None else cuts
    with open_from(proxied.address(service), nodelay=True) as sock:
        # every piece its own send; the payload's first byte rides with the header's last
        send_in_pieces(sock, header + b"PAYLOAD", cuts + [len(header) + 1], gap=0.01)
        sock.shutdown(1)
        check_named(answer_of(sock), src, 2000, dst, 20, b"PAYLOAD")


def test_slow_header_within_timeout_is_served_and_superd_does_not_spin(proxied):
    header = proxy_v1("192.0.2.31", "198.51.100.3", 3131, 31)
    before = cpu_seconds(proxied.pid)
    with open_from(proxied.address("v1"), nodelay=True) as sock:
        # 12 pieces, 0.15 s apart: about 1.7 s to send a 44-byte header
        send_in_pieces(sock, header, range(4, len(header), 4), gap=0.15)
        spent = cpu_seconds(proxied.pid) - before
        assert talk(proxied.address("plain"), b"meanwhile")[1] == b"meanwhile"
        sock.sendall(b"slow")
        sock.shutdown(1)
        check_named(answer_of(sock), "192.0.2.31", 3131, "198.51.100.3", 31, b"slow")
    assert spent < 0.5, f"superd used {spent:.2f} s of CPU while a header trickled in"


def test_too_slow_header_is_refused_and_others_are_served(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  p: {{listen: "127.0.0.1:0", server: {env}, proxy_protocol: v1, proxy_from: [{TRUSTED}], proxy_timeout: 0.5}}
""")
    header = proxy_v1("192.0.2.41", "198.51.100.4", 4141, 41)
    with open_from(d.address("p"), "127.0.0.8") as slow:
        slow.sendall(header[:10])
        check_named(talk(d.address("p"), b"prompt", before=proxy_v1("192.0.2.42", "198.51.100.4", 1, 2)),
                    "192.0.2.42", 1, "198.51.100.4", 2, b"prompt")
        d.log.wait_for(r"^refused service=p client=127\.0\.0\.8:\d+ conn=\d+ reason=proxy_timeout ")
        assert read_until_eof(slow) == b""
    d.send(signal.SIGUSR1)
    d.log.wait_for(r"^status service=p .*started=1 .*refused_proxy_timeout=1$")


def test_header_from_outside_proxy_from_is_refused_at_once(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  p: {{listen: "127.0.0.1:0", server: {env}, proxy_protocol: any, proxy_from: [127.0.0.2/32], proxy_timeout: 30}}
""")
    address = d.address("p")
    header = proxy_v1("192.0.2.51", "198.51.100.5", 5151, 51)
    with open_from(address, "127.0.0.3") as sock:      # says nothing: refused all the same
        assert read_until_eof(sock) == b""
    d.log.wait_for(r"^refused service=p client=127\.0\.0\.3:\d+ conn=\d+ reason=proxy_from$")
    assert talk(address, b"x", "127.0.0.4", before=header) is None
    d.log.wait_for(r"^refused service=p client=127\.0\.0\.4:\d+ conn=\d+ reason=proxy_from$")
    check_named(talk(address, b"trusted", "127.0.0.2", before=header),
                "192.0.2.51", 5151, "198.51.100.5", 51, b"trusted")


PAYLOADS = [b"\x00first byte is NUL", b"\r\nPROXY TCP4 6.6.6.6 6.6.6.6 6 6\r\n",
            V2_SIGNATURE + b"looks like a header", bytes(range(256)) * 800]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("payload", PAYLOADS, ids=["nul", "v1-lookalike", "v2-lookalike", "200k"])
def test_payload_in_the_same_segment_reaches_the_handler_intact(proxied, version, payload):
    make = proxy_v1 if version == 1 else proxy_v2
    header = make("192.0.2.61", "198.51.100.6", 6161, 61)
    with open_from(proxied.address("any")) as sock:
        sock.sendall(header + payload)       # one send: header and payload together
        sock.shutdown(1)
        check_named(answer_of(sock), "192.0.2.61", 6161, "198.51.100.6", 61, payload)


def test_checks_apply_to_the_client_the_header_names(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  p:
    listen: "127.0.0.1:0"
    server: {env}
    proxy_protocol: v2
    proxy_from: [127.0.0.1]
    only_from: [192.0.2.0/24]
    no_access: [192.0.2.99]
    per_source: 1
""")
    address = d.address("p")

    def from_client(ip, port=1000):
        return proxy_v2(ip, "198.51.100.7", port, 71)

    # The balancer (127.0.0.1) is not in only_from, and it carries two clients
    # at once although per_source is 1: the checks see the named clients.
    first = hold(address, before=from_client("192.0.2.7"))
    second = hold(address, before=from_client("192.0.2.8"))
    try:
        assert first and second
        assert hold(address, before=from_client("192.0.2.7", 1001)) is None
        d.log.wait_for(r"^refused service=p client=192\.0\.2\.7:1001 conn=\d+ reason=per_source$")
        assert talk(address, before=from_client("203.0.113.9")) is None
        d.log.wait_for(r"^refused service=p client=203\.0\.113\.9:1000 conn=\d+ reason=only_from$")
        assert talk(address, before=from_client("192.0.2.99")) is None
        d.log.wait_for(r"^refused service=p client=192\.0\.2\.99:1000 conn=\d+ reason=no_access:192\.0\.2\.99/32$")
        finish(first)
        first = None
        d.log.wait_for(r"^exit service=p client=192\.0\.2\.7:1000 ")
        assert talk(address, b"back", before=from_client("192.0.2.7", 1002))[1] == b"back"
    finally:
        for sock in (first, second):
            if sock:
                sock.close()


@pytest.mark.parametrize("header", [
    proxy_v2(),                                                                     # PROXY, UNSPEC
    V2_SIGNATURE + b"\x21\x31" + (216).to_bytes(2, "big") + b"/tmp/a".ljust(108, b"\0")
    + b"/tmp/b".ljust(108, b"\0"),                                                  # PROXY, UNIX stream
], ids=["v2-unspec", "v2-unix"])
def test_v2_families_without_an_ip_keep_the_connections_own_addresses(proxied, header):
    address = proxied.address("v2")
    with open_from(address, "127.0.0.11") as sock:
        sock.sendall(header + b"payload")
        sock.shutdown(1)
        port = sock.getsockname()[1]
        check_named(answer_of(sock), "127.0.0.11", port, "127.0.0.1", address[1], b"payload")


@pytest.mark.parametrize("prefix, second_served", [(None, False), (128, True)])
def test_per_source_groups_ipv6_clients_by_prefix(superd, tmp_path, prefix, second_served):
    """lo has only ::1, so the IPv6 clients are named by a PROXY header."""
    env = env_handler(tmp_path)
    extra = f"\n    per_source_v6_prefix: {prefix}" if prefix else ""
    d = superd(f"""
services:
  p:
    listen: "127.0.0.1:0"
    server: {env}
    proxy_protocol: v1
    proxy_from: [127.0.0.1]
    per_source: 1{extra}
""")
    address = d.address("p")

    def named(ip):
        return proxy_v1(ip, "2001:db8::ffff", 4000, 80)

    first = hold(address, before=named("2001:db8:0:1::1"))
    try:
        assert first is not None
        second = hold(address, before=named("2001:db8:0:1::2"))     # the same /64
        assert (second is not None) == second_served
        if second is not None:
            second.close()
        else:
            d.log.wait_for(r"^refused service=p client=\[2001:db8:0:1::2\]:4000 conn=\d+ reason=per_source$")
        other = hold(address, before=named("2001:db8:0:2::1"))      # another /64
        assert other is not None
        other.close()
    finally:
        first.close()


def test_balancer_on_a_dual_stack_listener_matches_its_ipv4_proxy_from(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  p: {{listen: 0, server: {env}, proxy_protocol: any, proxy_from: [127.0.0.1], proxy_timeout: 30}}
""")
    port = d.address("p")[1]
    header = proxy_v2("192.0.2.81", "198.51.100.8", 8181, 81)
    check_named(talk(("127.0.0.1", port), b"lb", "127.0.0.1", before=header),
                "192.0.2.81", 8181, "198.51.100.8", 81, b"lb")
    assert talk(("127.0.0.1", port), b"lb", "127.0.0.2", before=header) is None
    d.log.wait_for(r"^refused service=p client=127\.0\.0\.2:\d+ conn=\d+ reason=proxy_from$")
    assert talk(("::1", port), b"lb", before=header) is None
    d.log.wait_for(r"^refused service=p client=\[::1\]:\d+ conn=\d+ reason=proxy_from$")


def proxied_service(superd, tmp_path, **extra):
    """A daemon with one PROXY v1 service, p, trusted from loopback."""
    more = "".join(f", {k}: {v}" for k, v in extra.items())
    return superd(f"""
services:
  p: {{listen: "127.0.0.1:0", server: {env_handler(tmp_path)}, proxy_protocol: v1, proxy_from: [{TRUSTED}], proxy_timeout: 30{more}}}
""")


def accepted_silent(d, count):
    """count connections to p that superd has accepted, their headers not sent."""
    socks = [open_from(d.address("p")) for _ in range(count)]
    d.wait_status("p", "accepted", count)
    return socks


def test_proxied_connections_wait_out_a_rate_pause(superd, tmp_path):
    """Accepted before the pause, their headers after: they wait in superd as
    the backlog's clients do, and start no faster than `rate` allows."""
    d = proxied_service(superd, tmp_path, rate="{limit: 2, per: 600, pause: 1}")
    socks = accepted_silent(d, 4)
    for n, sock in enumerate(socks):
        sock.sendall(proxy_v1(f"192.0.2.{n + 1}", "192.0.2.200", 1000, 80) + b"x")
        sock.shutdown(1)
    for sock in socks:
        with sock:
            assert answer_of(sock)[1] == b"x"
    d.log.wait_count(r"^exit service=p ", 4)
    resumed = line_index(d.log, r"^service-resumed service=p reason=rate$")
    early = [n for n in range(4) if line_index(d.log, rf"^exit service=p client=192\.0\.2\.{n + 1}:") < resumed]
    assert len(early) == 2, d.log.text()


def test_proxied_connections_waiting_for_a_slot_start_when_a_reload_adds_some(superd, tmp_path):
    d = proxied_service(superd, tmp_path, instances=1)
    first, *waiting = accepted_silent(d, 3)     # accepted while there was room
    try:
        first.sendall(proxy_v1("192.0.2.1", "192.0.2.200", 1000, 80))
        assert read_head(first)["REMOTE_ADDR"] == "192.0.2.1"
        for n, sock in enumerate(waiting, 2):    # checked, then wait inside superd
            sock.sendall(proxy_v1(f"192.0.2.{n}", "192.0.2.200", 1000, 80))
        d.reload(Path(d.config_path).read_text().replace("instances: 1", "instances: 3"))
        for sock in waiting:                     # served while the first still runs
            with sock:
                assert read_head(sock)["REMOTE_ADDR"].startswith("192.0.2.")
    finally:
        first.close()


def test_a_header_is_read_by_the_settings_its_connection_was_accepted_under(superd, tmp_path):
    d = proxied_service(superd, tmp_path)
    header = proxy_v1("192.0.2.7", "192.0.2.200", 1000, 80)
    with accepted_silent(d, 1)[0] as sock:
        sock.sendall(header[:10])
        d.reload(Path(d.config_path).read_text().replace(", proxy_protocol: v1", "")
                 .replace(", proxy_from: [127.0.0.0/8], proxy_timeout: 30", ""))
        sock.sendall(header[10:] + b"payload")
        sock.shutdown(1)
        env, payload = answer_of(sock)
    assert env["REMOTE_ADDR"] == "192.0.2.7" and payload == b"payload"


def test_a_stop_refuses_the_connections_still_waiting_for_a_header(superd, tmp_path):
    d = proxied_service(superd, tmp_path)
    with accepted_silent(d, 1)[0] as sock:
        d.send(signal.SIGTERM)
        assert read_until_eof(sock) == b""
        d.log.wait_for(r"^refused service=p client=127\.0\.0\.1:\d+ conn=\d+ reason=service_gone ")
    assert d.proc.wait(10) == 0
