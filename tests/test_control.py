"""The control socket and superdctl, against a real superd.

Every command of DESIGN.md's table through the real `superdctl`, the
socket's permissions (as another user), and clients that stall, flood or
send too much: each is dropped or refused, and everyone else is served.
"""

import grp
import json
import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TIMEOUT, connect, python_handler, read_all
from test_protection_support import env_handler, hold, open_from, proxy_v1, read_until_eof

SUPERDCTL = str(Path(sys.executable).with_name("superdctl"))

# A handler that starts a grandchild in its own process group, says both pids, and waits.
FAMILY = """
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "300"])
sys.stdout.write(f"{os.getpid()} {child.pid}\\n"); sys.stdout.flush()
time.sleep(300)
"""


def ctl(d, *args, json_out=False):
    argv = [SUPERDCTL, "--ready-file", str(d.ready_path)] + (["--json"] if json_out else [])
    run = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=TIMEOUT)
    return run


def ctl_json(d, *args):
    run = ctl(d, *args, json_out=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


def test_status_and_list_show_services_and_every_live_connection(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  plain: {{listen: "127.0.0.1:0", server: {env}}}
  p: {{listen: "127.0.0.1:0", server: {env}, proxy_protocol: v1, instances: 1}}
""")
    running = hold(d.address("plain"))
    # three connections wait for their headers; two then send one, for one slot
    waiting, first, queued = (connect(d.address("p")) for _ in range(3))
    _wait_until(d, lambda conns: sum(c["state"] == "proxy-wait" for c in conns) == 3)
    first.sendall(proxy_v1("192.0.2.1", "192.0.2.9", 1000, 80))
    _wait_until(d, lambda conns: any(c["state"] == "running" and c["service"] == "p"
                                     for c in conns))
    queued.sendall(proxy_v1("192.0.2.2", "192.0.2.9", 2000, 80))
    try:
        states = _wait_until(d, lambda conns: any(c["state"] == "queued" for c in conns))
        states = {c["client"]: c for c in states}
        assert states["192.0.2.1:1000"]["state"] == "running"
        assert states["192.0.2.1:1000"]["local"] == "192.0.2.9:80"
        assert states["192.0.2.2:2000"]["state"] == "queued"
        assert states["192.0.2.2:2000"]["pid"] is None
        assert [c["state"] for c in states.values() if c["service"] == "plain"] == ["running"]
        assert sum(c["state"] == "proxy-wait" for c in states.values()) == 1
        only_p = ctl_json(d, "list", "p")["connections"]
        assert {c["service"] for c in only_p} == {"p"} and len(only_p) == 3
        table = ctl(d, "list").stdout.splitlines()
        assert table[0].split() == ["ID", "SERVICE", "CLIENT", "LOCAL", "PID", "STATE", "AGE"]
        assert any("192.0.2.2:2000" in row and "queued" in row for row in table)
        status = {s["name"]: s for s in ctl_json(d, "status")["services"]}
        assert status["p"]["running"] == 1 and status["p"]["instances"] == 1
        assert status["plain"]["accepted"] == 1 and status["plain"]["state"] == "serving"
        assert "SERVICE" in ctl(d, "status").stdout.splitlines()[0]
    finally:
        for sock in (running, waiting, first, queued):
            sock.close()


def _wait_until(d, done):
    """superdctl list until done(connections) (each answer is the loop's state then)."""
    for _ in range(200):
        conns = ctl_json(d, "list")["connections"]
        if done(conns):
            return conns
    raise AssertionError(f"never: {conns}")


def test_kill_ends_that_handler_and_its_process_group_only(superd, tmp_path):
    family = python_handler(tmp_path, "family.py", FAMILY)
    d = superd(f"""
services:
  f: {{listen: "127.0.0.1:0", server: {family}}}
""")
    socks = [connect(d.address("f")) for _ in range(2)]
    pids = [list(map(int, s.makefile().readline().split())) for s in socks]
    conns = {c["pid"]: c["id"] for c in ctl_json(d, "list")["connections"]}
    victim, bystander = pids
    run = ctl(d, "kill", str(conns[victim[0]]))
    assert run.returncode == 0 and run.stdout == f"killed {conns[victim[0]]}\n"
    d.log.wait_for(rf"^exit service=f .* conn={conns[victim[0]]} pid={victim[0]} signal=SIGTERM")
    assert read_until_eof(socks[0]) == b""
    d.log.wait_for(rf"^kill service=f .* conn={conns[victim[0]]} ")
    # superd, the subreaper, inherits and reaps the grandchild once the group has its TERM
    d.log.wait_for(rf"^reaped pid={victim[1]} signal=SIGTERM")
    assert not alive(victim[1]), "its process group got the TERM too"
    assert alive(bystander[0]) and alive(bystander[1]), "nothing else"
    bad = ctl(d, "kill", "999999")
    assert bad.returncode == 1 and "no connection 999999" in bad.stderr
    usage = ctl(d, "kill", "x")
    assert usage.returncode == 64
    for sock in socks:
        sock.close()


def test_pause_holds_clients_in_the_backlog_and_resume_serves_them(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  a: {{listen: "127.0.0.1:0", server: {env}}}
""")
    assert ctl(d, "pause", "a").stdout == "a: paused (operator)\n"
    d.log.wait_for(r"^service-paused level=warning service=a reason=operator$")
    assert ctl_json(d, "status")["services"][0]["paused"] == ["operator"]
    waiting = connect(d.address("a"))
    waiting.sendall(b"x")
    waiting.shutdown(socket.SHUT_WR)
    assert ctl_json(d, "list")["connections"] == [], "in the kernel's backlog, not accepted"
    assert ctl(d, "resume", "a").returncode == 0
    assert b"REMOTE_ADDR=127.0.0.1" in read_all(waiting), "served once resumed"
    again = ctl(d, "resume", "a")
    assert again.returncode == 1 and "not paused by an operator" in again.stderr
    assert ctl(d, "pause", "nosuch").returncode == 1
    assert d.log.count(r"^refused ") == 0
    waiting.close()


def test_reload_answers_with_its_verdict(superd, tmp_path):
    env = env_handler(tmp_path)
    d = superd(f"""
services:
  a: {{listen: "127.0.0.1:0", server: {env}}}
  b: {{listen: "127.0.0.1:0", server: {env}}}
""")
    Path(d.config_path).write_text(f"""
services:
  a: {{listen: "127.0.0.1:0", server: {env}, instances: 3}}
  c: {{listen: "127.0.0.1:0", server: {env}}}
""")
    run = ctl(d, "reload")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "reloaded: added c; removed b; changed a\n"
    Path(d.config_path).write_text("services:\n  a: {listen: nowhere, server: /bin/cat}\n")
    bad = ctl(d, "reload")
    assert bad.returncode == 1
    assert f"{d.config_path}:2: services.a.listen" in bad.stderr
    assert sorted(ctl_json(d, "status")["daemon"]["reloads"].items()) == [("failed", 1), ("ok", 1)]
    config = ctl_json(d, "config")["services"]
    assert sorted(config) == ["a", "c"] and config["a"]["instances"] == 3
    assert config["a"]["listen"] == ["127.0.0.1:0"] and config["a"]["mode"] == "nowait"
    assert "instances: 3" in ctl(d, "config").stdout


def test_the_socket_is_the_daemons_users_only(superd, tmp_path, public_dir):
    nobody = pwd.getpwnam("nobody")
    d = superd(f"""
control: {public_dir}/ctl
services:
  a: {{listen: "127.0.0.1:0", server: /bin/cat}}
""")
    path = json.loads(Path(d.ready_path).read_text())["control"]
    assert path == f"{public_dir}/ctl"
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert connect_as(nobody.pw_uid, nobody.pw_gid, path) == "refused"
    assert ctl(d, "status").returncode == 0, "its own user is served"


def test_control_group_makes_it_0660_for_that_group(superd, public_dir):
    d = superd(f"""
control: {public_dir}/ctl
control_group: nogroup
services:
  a: {{listen: "127.0.0.1:0", server: /bin/cat}}
""")
    nogroup = grp.getgrnam("nogroup").gr_gid
    st = os.lstat(f"{public_dir}/ctl")
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == nogroup
    nobody = pwd.getpwnam("nobody").pw_uid
    assert connect_as(nobody, nogroup, f"{public_dir}/ctl") == "connected", "the group may"
    other = grp.getgrnam("daemon").gr_gid
    assert connect_as(nobody, other, f"{public_dir}/ctl") == "refused", "another group may not"
    assert ctl(d, "status").returncode == 0


def connect_as(uid, gid, path):
    """Try to connect to path as another user, in a forked child (no exec needed)."""
    pid = os.fork()
    if pid == 0:                       # the child: only system calls, then _exit
        code = 2
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            sock.connect(path)
            code = 1
        except PermissionError:
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "refused", 1: "connected"}.get(os.waitstatus_to_exitcode(status), "error")


@pytest.mark.parametrize("text, key, says", [
    ("control: 7\n", "control", "expected a path, or none"),
    ("control_group: no-such-group-here\n", "control_group", "no group"),
    (f"control: /{'x' * 120}\n", "control", "a UNIX socket path is at most 107 bytes"),
])
def test_control_keys_are_checked_with_file_line_and_key(tmp_path, text, key, says):
    path = tmp_path / "services.yaml"
    path.write_text(text + "services:\n  a: {listen: 0, server: /bin/cat}\n")
    run = subprocess.run([sys.executable, "-m", "superd", "--check", "-f", str(path)],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 78
    assert f"{path}:1: {key}: {says}" in run.stderr


def test_control_none_turns_it_off_and_superdctl_says_no_daemon(superd, tmp_path):
    d = superd("""
control: none
services:
  a: {listen: "127.0.0.1:0", server: /bin/cat}
""")
    assert "control" not in json.loads(Path(d.ready_path).read_text())
    run = ctl(d, "status")
    assert run.returncode == 69 and "names no control socket" in run.stderr


def raw(path, data, timeout=TIMEOUT):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)                 # blocking: waits for room in the backlog
    sock.settimeout(timeout)
    if data:
        sock.sendall(data)
    return sock


def test_stalling_flooding_and_oversized_clients_do_not_stop_the_daemon(superd, tmp_path):
    d = superd("""
services:
  a: {listen: "127.0.0.1:0", internal: echo}
""", env={"SUPERD_THRESHOLDS": "control_deadline=1"})
    path = json.loads(Path(d.ready_path).read_text())["control"]
    huge = raw(path, b"x" * ((64 << 10) + 1))      # one byte past the limit, no newline
    answer = json.loads(read_all(huge))
    assert answer["ok"] is False and "longer than" in answer["error"]
    garbage = raw(path, b"{not json\n")
    assert "not one line of JSON" in json.loads(read_all(garbage))["error"]
    unknown = raw(path, b'{"command": "dance"}\n')
    assert "unknown command" in json.loads(read_all(unknown))["error"]
    silent = [raw(path, b"") for _ in range(40)]          # more than MAX_CLIENTS, all mute
    with connect(d.address("a")) as sock:                 # the services go on meanwhile
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    for sock in silent:                                    # each closed: at once or at the deadline
        assert read_all(sock) == b""
        sock.close()
    d.log.wait_for(r"^control-dropped reason=deadline answered=0$")
    assert ctl(d, "status").returncode == 0, "served again once they are gone"
    for sock in (huge, garbage, unknown):
        sock.close()


def test_status_may_leave_out_connections_and_history(superd, tmp_path):
    d = superd("""
services:
  a: {listen: "127.0.0.1:0", server: /bin/cat}
""")
    path = json.loads(Path(d.ready_path).read_text())["control"]
    held = connect(d.address("a"))
    try:
        _wait_until(d, lambda conns: len(conns) == 1)

        def status(**parts):
            with raw(path, json.dumps({"command": "status", **parts}).encode() + b"\n") as sock:
                return json.loads(read_all(sock))
        whole = status()
        assert len(whole["connections"]) == 1 and whole["history"]
        lean = status(connections=False, history=False)
        assert lean["ok"] and "connections" not in lean and "history" not in lean
        assert lean["services"][0]["running"] == 1, "the services are all there"
        assert lean["daemon"]["state"] == "serving"
        assert "history" in status(connections=False) and "connections" in status(history=False)
        wrong = status(connections="no")
        assert wrong["ok"] is False and "connections: expected true or false" in wrong["error"]
    finally:
        held.close()


def test_a_client_that_sends_more_than_its_request_gets_the_answer_and_a_clean_close(superd):
    d = superd("""
services:
  a: {listen: "127.0.0.1:0", internal: echo}
""")
    path = json.loads(Path(d.ready_path).read_text())["control"]
    # past what superd reads for a request (64 KiB), so some stays queued
    extra = b'{"command": "status"}\n' * 3500 + b"trailing bytes, no newline"
    with raw(path, b'{"command": "list"}\n' + extra) as sock:
        answer = read_all(sock)           # a reset would raise ConnectionResetError here
    assert json.loads(answer)["ok"] is True and answer.count(b"\n") == 1


def test_the_bundled_status_handler_reads_this_daemons_records(superd, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    d = superd("""
services:
  echo: {listen: "127.0.0.1:0", internal: echo, only_from: [127.0.0.1]}
  status: {listen: "127.0.0.1:0", internal: status}
""")
    for _ in range(3):
        with connect(d.address("echo")) as sock:
            sock.sendall(b"x")
            sock.shutdown(socket.SHUT_WR)
            assert read_all(sock) == b"x"
    with open_from(d.address("echo"), "127.0.0.2") as sock:
        assert read_all(sock) == b""
    d.log.wait_count(r"^exit service=echo ", 3)
    with connect(d.address("status")) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        head, _, body = read_all(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert samples[("superd_connections_accepted_total", (("service", "echo"),))] == 4
    assert samples[("superd_connections_refused_total",
                    (("reason", "only_from"), ("service", "echo")))] == 1
    assert samples[("superd_handler_exits_total", (("outcome", "ok"), ("service", "echo")))] == 3
    assert samples[("superd_handler_duration_seconds_count", (("service", "echo"),))] == 3
    assert samples[("superd_spawn_seconds_count", (("service", "echo"),))] == 3
    assert samples[("superd_handlers_running", (("service", "status"),))] == 1, "this one"
    assert samples[("process_open_fds", ())] > 0



@pytest.mark.parametrize("environ, euid, ready, expected", [
    ({"RUNTIME_DIRECTORY": "/run/x:/run/y"}, 1000, None, "/run/x/control"),
    ({}, 0, None, "/run/superd/control"),
    ({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000, None, "/run/user/1000/superd/control"),
    ({}, 1000, "/srv/r.json", "/srv/r.json.control"),
    ({}, 1000, None, "/tmp/superd-1000/control"),
    ({"TMPDIR": "/var/tmp"}, 1000, None, "/var/tmp/superd-1000/control"),
])
def test_the_default_control_path(environ, euid, ready, expected):
    from superd import control
    assert control.default_path(environ, euid, ready) == expected


def test_the_fallback_folder_in_tmp_must_be_private_and_ours(tmp_path, monkeypatch):
    """Under a shared /tmp another user could make superd-UID first: refused."""
    import selectors

    from superd import control
    from superd.timers import Timers
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    folder = tmp_path / f"superd-{os.geteuid()}"
    path = str(folder / "control")

    def open_it():
        server = control.ControlServer(selectors.DefaultSelector(), Timers(), lambda: 0.0,
                                       None, lambda request, respond: {"ok": True})
        server.open(path)
        server.close()
    open_it()                                   # made 0700, and served
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    folder.chmod(0o755)
    with pytest.raises(OSError, match="not this user's own private folder"):
        open_it()
    folder.chmod(0o700)
    nobody = pwd.getpwnam("nobody")
    os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(OSError, match="owner uid %d" % nobody.pw_uid):
        open_it()
