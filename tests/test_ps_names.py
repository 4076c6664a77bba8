"""What `ps` shows: a handler's and a helper server's command line names its service."""

import os
import re

import psutil

from conftest import connect


def test_an_internal_handler_and_a_helper_server_name_their_service(superd, tmp_path):
    spawned = ('  asnobody: {listen: "127.0.0.1:0", internal: daytime, user: nobody}\n'
               if os.geteuid() == 0 else "")
    d = superd("""
services:
  webby: {listen: "127.0.0.1:0", internal: echo}
  warm: {listen: "127.0.0.1:0", internal: echo, preload: true}
""" + spawned)
    with connect(d.address("webby")) as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        handler = [p for p in psutil.Process(d.pid).children()
                   if "superd-echo" in " ".join(p.cmdline())]
        assert handler, "the handler is running"
        line = " ".join(handler[0].cmdline())
        assert "webby-superd-echo-" in line and line.endswith(" echo")
    ready = d.log.wait_for(r"^preload-ready service=warm pid=")
    server = psutil.Process(int(re.search(r"pid=(\d+)", ready).group(1))).cmdline()
    assert server[-2:] == ["preload-internal", "warm"]
    assert _comm(int(re.search(r"pid=(\d+)", ready).group(1))) == "superd:warm", "what top shows"
    assert max(len(a) for a in server) < 200, "no settings in the command line"
    if spawned:
        ready = d.log.wait_for(r"^preload-ready service=asnobody pid=")
        server = psutil.Process(int(re.search(r"pid=(\d+)", ready).group(1))).cmdline()
        assert server[-2:] == ["spawn", "asnobody"] and len(" ".join(server)) < 300


def _comm(pid):
    with open(f"/proc/{pid}/comm") as comm:
        return comm.read().strip()
