"""The pure parts of protection: admission rules and the PROXY header parser."""

import ipaddress
import struct

import pytest

from superd import limits, proxy

net = ipaddress.ip_network


@pytest.mark.parametrize("only, deny, client, expected", [
    ((), (), "10.1.2.3", None),
    ((net("127.0.0.0/8"),), (), "127.0.0.2", None),
    ((net("127.0.0.0/8"),), (), "10.0.0.1", "only_from"),
    ((net("127.0.0.0/8"),), (), "::ffff:127.0.0.5", None),          # mapped v4 is v4
    ((net("127.0.0.0/8"),), (), "::1", "only_from"),
    ((net("::1/128"),), (), "::1", None),
    ((net("127.0.0.0/8"),), (net("127.0.0.9/32"),), "127.0.0.9", "no_access:127.0.0.9/32"),
    ((), (net("2001:db8::/32"),), "2001:db8::5", "no_access:2001:db8::/32"),
    ((), (net("2001:db8::/32"),), "2001:db9::5", None),
])
def test_access_lists(only, deny, client, expected):
    acl = limits.AccessList(only, deny)
    assert acl.refusal(limits.client_ip(client)) == expected


def test_ipv6_sources_grouped_by_prefix():
    a = limits.source_key(limits.client_ip("2001:db8:1:2::1"), 64)
    b = limits.source_key(limits.client_ip("2001:db8:1:2:ffff::9"), 64)
    c = limits.source_key(limits.client_ip("2001:db8:1:3::1"), 64)
    assert a == b != c
    assert limits.source_key(limits.client_ip("2001:db8:1:3::1"), 48) == \
        limits.source_key(limits.client_ip("2001:db8:1:2::1"), 48)


def test_concurrency_admits_up_to_limit_and_forgets_idle_sources():
    c = limits.Concurrency(2)
    assert c.admit("a") and c.admit("a") and not c.admit("a")
    assert c.admit("b")
    c.release("a")
    assert c.admit("a")
    for _ in range(2):
        c.release("a")
    c.release("b")
    assert c.alive == {}


@pytest.mark.parametrize("times, expected", [
    ([0, 1, 2], [True, True, True]),
    ([0, 1, 2, 3], [True, True, True, False]),
    ([0, 1, 2, 10.5], [True, True, True, True]),     # the first left the window
    ([0, 0, 0, 0, 10.01, 10.02], [True, True, True, False, True, True]),
])
def test_source_rate_sliding_window(times, expected):
    rate = limits.SourceRate(limit=3, per=10)
    assert [rate.admit("x", t) for t in times] == expected


def test_source_rate_memory_is_bounded():
    rate = limits.SourceRate(limit=5, per=60, max_sources=100)
    for i in range(10000):
        rate.admit(i, now=i * 0.001)
    assert len(rate.seen) <= 100
    rate.admit("late", now=1000)                     # everyone else expired
    assert list(rate.seen) == ["late"]


def test_service_rate_pauses_at_the_limit_th_start_in_the_window():
    rate = limits.ServiceRate(limit=3, per=1, pause=5)
    assert [rate.started(t) for t in (0, 0.1, 0.2)] == [False, False, True]
    slow = limits.ServiceRate(limit=3, per=1, pause=5)
    assert [slow.started(t) for t in (0, 0.6, 1.2, 1.8)] == [False, False, False, False]


def test_failure_window():
    w = limits.FailureWindow(limit=3, per=10, pause=30)
    assert [w.failed(t) for t in (0, 1, 2)] == [False, False, False]
    assert w.failed(3) is True
    assert w.failed(4) is False                      # counting starts again
    spread = limits.FailureWindow(limit=3, per=10, pause=30)
    assert not any(spread.failed(t) for t in (0, 6, 12, 18, 24))


def test_guard_releases_per_source_slots():
    from superd.config import Service
    svc = Service(name="s", line=1, listen=(), protocol="tcp", mode="nowait", argv=("/bin/true",),
                  base_env=(), uid=-1, gid=-1, groups=(), workdir="/", instances=10, timeout=0,
                  stderr="inherit", enabled=True, internal="", per_source=1,
                  only_from=(net("127.0.0.0/8"),))
    guard = limits.Guard(svc)
    ip = limits.client_ip("127.0.0.2")
    reason, release = guard.admit(ip, 0)
    assert reason is None
    assert guard.admit(ip, 0)[0] == "per_source"
    release()
    assert guard.admit(ip, 0)[0] is None
    assert guard.admit(limits.client_ip("10.0.0.1"), 0)[0] == "only_from"


# -- PROXY -------------------------------------------------------------------------

SIG = proxy.V2_SIGNATURE


def v2(command=1, family=0x11, body=None, extra=b""):
    if body is None:
        body = bytes([192, 0, 2, 1]) + bytes([198, 51, 100, 2]) + struct.pack("!HH", 4000, 443)
    body += extra
    return SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize("data, accept, expected", [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 4000 443\r\nGET", "any",
     (44, ("192.0.2.1", 4000), ("198.51.100.2", 443))),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n", "v1", (40, ("2001:db8::1", 1), ("2001:db8::2", 2))),
    (b"PROXY UNKNOWN\r\n", "any", (15, None, None)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", "any", (35, None, None)),
    (v2(), "v2", (28, ("192.0.2.1", 4000), ("198.51.100.2", 443))),
    (v2(extra=b"\x04\x00\x01X") + b"payload", "any", (32, ("192.0.2.1", 4000), ("198.51.100.2", 443))),
    (v2(command=0, family=0, body=b""), "any", (16, None, None)),
    (v2(family=0x31, body=b"\0" * 216), "any", (232, None, None)),
    (v2(family=0x21, body=bytes(15) + b"\1" + bytes(15) + b"\2" + struct.pack("!HH", 5, 6)), "any",
     (52, ("::1", 5), ("::2", 6))),
])
def test_proxy_headers_parse(data, accept, expected):
    h = proxy.parse(data, accept)
    assert (h.length, h.source, h.destination) == expected


@pytest.mark.parametrize("data", [
    b"", b"PRO", b"PROXY TCP4 1.2.3.4", SIG[:5], SIG, v2()[:20], v2()[:-1],
])
def test_proxy_incomplete_headers_need_more(data):
    assert proxy.parse(data, "any") is None


@pytest.mark.parametrize("data, accept, fragment", [
    (b"GET / HTTP/1.1\r\n", "any", "no PROXY"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "v2", "no PROXY v2"),
    (v2(), "v1", "no PROXY v1"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "any", "malformed"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "any", "malformed"),
    (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "any", "bad address"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "any", "family"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", "any", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "any", "bad port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", "any", "malformed"),
    (b"PROXY " + b"A" * 120, "any", "longer than 107"),
    (b"PROXY TCP4 1.2.3.4\n", "any", "CRLF"),
    (SIG + b"\x31\x11\x00\x0c" + bytes(12), "any", "version"),
    (SIG + b"\x25\x11\x00\x0c" + bytes(12), "any", "command"),
    (SIG + b"\x21\x99\x00\x0c" + bytes(12), "any", "family"),
    (SIG + b"\x21\x21\x00\x0c" + bytes(12), "any", "too short"),
    (SIG + b"\x21\x11\xff\xff", "any", "too long"),
])
def test_proxy_bad_headers_are_refused(data, accept, fragment):
    with pytest.raises(proxy.ProxyError) as info:
        proxy.parse(data, accept)
    assert fragment in str(info.value)
