"""handlers/classic.py under the real superd, as `internal: NAME` services.

Uses conftest's `superd` fixture (a daemon on port 0, ready on NOTIFY_SOCKET).
Each test ends with SIGTERM, so superd itself ends the handlers it started
(they run in sessions of their own), then the fixture kills what is left.
"""

import socket

from conftest import connect, read_all
from test_classic_support import (CHARGEN, ask, check_daytime, check_time, echo_roundtrip,
                                  recv_exact)

CONFIG = """
services:
  echo:
    listen: 127.0.0.1:0
    internal: echo
  daytime:
    listen: 127.0.0.1:0
    internal: daytime
  time-udp:
    listen: 127.0.0.1:0
    protocol: udp
    internal: time
    args: [--idle-exit, "0.5"]
  chargen-wait:
    listen: 127.0.0.1:0
    mode: wait
    internal: chargen
    args: [--idle-exit, "0.5"]
"""


def test_internal_services(superd):
    daemon = superd(CONFIG, env={"TZ": "UTC"})
    with connect(daemon.address("echo")) as client:
        echo_roundtrip(client)
        client.shutdown(socket.SHUT_WR)
        assert read_all(client) == b""
    with connect(daemon.address("daytime")) as client:
        data = read_all(client)
    assert data.endswith(b"\r\n")
    for _ in range(2):
        check_time(ask(daemon.address("time-udp")))
    first = connect(daemon.address("chargen-wait"))
    second = connect(daemon.address("chargen-wait"))   # the same handler, another thread
    assert recv_exact(first, 74) == CHARGEN[:74]
    assert recv_exact(second, 74) == CHARGEN[:74]
    first.close()
    second.close()
    daemon.log.wait_for(r"^exit service=echo .*status=0")
    assert daemon.stop() == 0


def test_internal_daytime_follows_tz(superd):
    daemon = superd(CONFIG.replace("internal: daytime", "internal: daytime\n    passenv: [TZ]"),
                    env={"TZ": "UTC"})
    with connect(daemon.address("daytime")) as client:
        check_daytime(read_all(client))
    assert daemon.stop() == 0
