"""Under systemd the listening sockets also go into the fd store (FDSTORE=1,
FDNAME=the service), so a `systemctl restart` hands them to the next superd
and a client that connects in between waits in the backlog, refused by no one."""

import array
import json
import os
import signal
import socket
import subprocess
import sys

from conftest import TIMEOUT, connect, read_all

# As systemd starts a service with stored fds: on 3, 4, ...; LISTEN_PID its own pid.
TRAMPOLINE = """
import os, sys
fds = [int(f) for f in os.environ.pop("STORED").split(",")]
high = [os.dup2(fd, 100 + i) for i, fd in enumerate(fds)]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""


def superd_under_fake_systemd(tmp_path, name, stored=(), names=()):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / f"{name}.notify"))
    notify.settimeout(TIMEOUT)
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": str(tmp_path / f"{name}.notify"),
           "RUNTIME_DIRECTORY": str(tmp_path), "FDSTORE": "64"}   # FileDescriptorStoreMax=64
    argv = [sys.executable, "-m", "superd", "-f", str(tmp_path / "services.yaml"),
            "--ready-file", str(tmp_path / f"{name}.json")]
    if stored:
        env.update(STORED=",".join(str(fd) for fd in stored), LISTEN_FDS=str(len(stored)),
                   LISTEN_FDNAMES=":".join(names))
        argv = [sys.executable, "-c", TRAMPOLINE] + argv
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, pass_fds=tuple(stored))
    return proc, notify


def messages_until(notify, done):
    """[(text, [fds])] sd_notify sent, until done(text)."""
    got = []
    while True:
        data, ancillary, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(64 * 4))
        fds = array.array("i")
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
        got.append((data.decode(), list(fds)))
        if done(data.decode()):
            return got


def messages_until_ready(notify):
    return messages_until(notify, lambda text: "READY=1" in text.split("\n"))


def test_a_restart_hands_the_stored_sockets_over_and_refuses_nobody(tmp_path):
    (tmp_path / "services.yaml").write_text(f"""
services:
  echo: {{listen: "127.0.0.1:0", internal: echo}}
  local: {{listen: "unix:{tmp_path}/echo.sock", internal: echo}}
""")
    first, notify = superd_under_fake_systemd(tmp_path, "first")
    second = None
    stored = []
    try:
        messages_until_ready(notify)
        stores = [(text, fds) for text, fds in messages_until(notify, lambda t: "FDNAME=local" in t
                                                              and "FDSTORE=1" in t)
                  if "FDSTORE=1" in text]
        names = {text.split("FDNAME=")[1].split("\n")[0]: fds for text, fds in stores}
        assert sorted(names) == ["echo", "local"] and all(len(f) == 1 for f in names.values())
        ready = json.loads((tmp_path / "first.json").read_text())
        by_name = {n: socket.socket(fileno=fds[0]) for n, fds in names.items()}
        port = by_name["echo"].getsockname()[1]
        assert ready["services"]["echo"] == [f"127.0.0.1:{port}"]
        assert by_name["local"].getsockname() == f"{tmp_path}/echo.sock"
        # systemd's store keeps these open: stop superd, connect, start another
        first.send_signal(signal.SIGTERM)
        assert first.wait(TIMEOUT) == 0
        waiting = connect(("127.0.0.1", port))
        waiting.sendall(b"in between")
        waiting.shutdown(socket.SHUT_WR)
        stored = [by_name[n].fileno() for n in ("echo", "local")]
        notify.close()
        second, notify = superd_under_fake_systemd(tmp_path, "second", stored, ["echo", "local"])
        messages_until_ready(notify)
        assert read_all(waiting) == b"in between", "queued in the backlog, then served"
        waiting.close()
        with connect(str(tmp_path / "echo.sock")) as sock:
            sock.sendall(b"unix too")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"unix too"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(TIMEOUT)
        for fd in stored:
            os.close(fd)
        notify.close()
    log = second.stderr.read().decode()
    assert log.count("adopted=1") == 2 and "refused" not in log
