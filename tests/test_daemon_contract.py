"""What a handler receives from superd (DESIGN.md, "What a handler gets").

A probe handler reports, as JSON on the socket, its open fds, environment,
session, signal dispositions and mask; the tests check every promise.
"""

import json
import os
import socket
import sys

import pytest

from conftest import connect, python_handler, read_all

PROBE = r'''
import json, os, socket, stat
fds = sorted(int(f) for f in os.listdir("/proc/self/fd"))
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
def kind(fd):
    try:
        return stat.S_IFMT(os.fstat(fd).st_mode)
    except OSError:
        return None
s0 = socket.socket(fileno=os.dup(0))
report = {
    "fds": [f for f in fds if kind(f) is not None and f != fds[-1] or f < 3],
    "env": dict(os.environ),
    "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
    "sigign": status["SigIgn"].strip(), "sigblk": status["SigBlk"].strip(),
    "blocking": s0.getblocking(), "cwd": os.getcwd(),
    "same01": os.fstat(0).st_ino == os.fstat(1).st_ino,
}
s0.detach()
os.write(1, json.dumps(report).encode())
'''


def probe_over(address):
    with connect(address) as sock:
        return json.loads(read_all(sock))


@pytest.fixture
def probe(tmp_path):
    return python_handler(tmp_path, "probe.py", PROBE)


def test_nowait_handler_sees_only_its_socket_and_documented_env(superd, probe, tmp_path):
    d = superd(f"""
services:
  probe:
    listen: 127.0.0.1:0
    server: {probe}
    env: {{GREETING: hello}}
    passenv: [SUPERD_TEST_PASSED]
""", env={"SUPERD_TEST_PASSED": "yes", "SUPERD_TEST_SECRET": "no"})
    host, port = d.address("probe")
    r = probe_over((host, port))
    # fds: 0 and 1 the socket, 2 stderr; the listdir fd itself is filtered out
    assert [f for f in r["fds"] if f > 2] == []
    assert r["same01"]
    assert r["blocking"] is True
    env = r["env"]
    assert env["GREETING"] == "hello"
    assert env["SUPERD_TEST_PASSED"] == "yes"
    assert "SUPERD_TEST_SECRET" not in env
    assert "NOTIFY_SOCKET" not in env
    assert env["SUPERD_SERVICE"] == "probe"
    assert env["PROTO"] == "TCP"
    assert env["REMOTE_ADDR"] == env["TCPREMOTEIP"] == env["REMOTE_HOST"] == "127.0.0.1"
    assert env["TCPLOCALIP"] == "127.0.0.1" and env["TCPLOCALPORT"] == str(port)
    assert env["REMOTE_PORT"] == env["TCPREMOTEPORT"] and int(env["REMOTE_PORT"]) > 0
    assert env["PATH"]
    assert r["sid"] == r["pid"] == r["pgid"]
    assert int(r["sigblk"], 16) == 0
    assert r["cwd"] == str(tmp_path)
    line = d.log.wait_for(r"^exit service=probe ")
    assert "status=0" in line and "client=127.0.0.1:" in line and "duration=" in line


def test_signals_default_and_unblocked(superd, tmp_path):
    # A shell script, since Python itself ignores SIGPIPE and SIGXFSZ at start.
    script = tmp_path / "sigs.sh"
    script.write_text("#!/bin/sh\nexec grep -E '^Sig(Ign|Blk)' /proc/self/status\n")
    script.chmod(0o755)
    d = superd(f"""
services:
  sigs: {{listen: "127.0.0.1:0", server: {script}}}
""")
    with connect(d.address("sigs")) as sock:
        text = read_all(sock).decode()
    fields = dict(line.split(":\t") for line in text.splitlines())
    # glibc's posix_spawn leaves its own signals 32 and 33 (SIGCANCEL,
    # SIGSETXID) ignored; every other signal must be at its default.
    glibc_own = (1 << 31) | (1 << 32)
    assert int(fields["SigIgn"], 16) & ~glibc_own == 0, "SIGPIPE, SIGXFSZ, ... must not stay ignored"
    assert int(fields["SigBlk"], 16) == 0


def test_environment_is_built_afresh(superd, probe):
    d = superd(f"""
services:
  probe: {{listen: "127.0.0.1:0", server: {probe}}}
""", env={"LANG": "C.UTF-8", "HOME": "/nonexistent"})
    env = probe_over(d.address("probe"))["env"]
    assert "LANG" not in env and "HOME" not in env
    assert set(env) >= {"PATH", "REMOTE_ADDR", "REMOTE_PORT", "TCPREMOTEIP", "TCPREMOTEPORT",
                        "TCPLOCALIP", "TCPLOCALPORT", "PROTO", "REMOTE_HOST", "SUPERD_SERVICE"}


def test_ipv6_loopback(superd, probe):
    d = superd(f"""
services:
  probe: {{listen: "[::1]:0", server: {probe}}}
""")
    host, port = d.address("probe")
    assert host == "::1"
    env = probe_over((host, port))["env"]
    assert env["REMOTE_ADDR"] == "::1" and env["TCPLOCALIP"] == "::1"


def test_bare_port_is_dual_stack_and_reports_plain_ipv4(superd, probe):
    d = superd(f"""
services:
  probe: {{listen: 0, server: {probe}}}
""")
    _, port = d.address("probe")
    assert probe_over(("127.0.0.1", port))["env"]["REMOTE_ADDR"] == "127.0.0.1"
    assert probe_over(("::1", port))["env"]["REMOTE_ADDR"] == "::1"


def test_unix_socket_with_peer_credentials_and_stale_file_replaced(superd, probe, tmp_path):
    path = tmp_path / "probe.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()                      # a socket file nobody listens on
    d = superd(f"""
services:
  probe: {{listen: "unix:{path}", server: {probe}}}
""")
    assert d.address("probe") == str(path)
    assert oct(path.stat().st_mode & 0o777) == "0o666"
    env = probe_over(str(path))["env"]
    assert env["PROTO"] == "UNIX"
    assert env["UNIXREMOTEPID"] == str(os.getpid())
    assert env["UNIXREMOTEEUID"] == str(os.geteuid())
    d.stop()
    assert not path.exists(), "superd removes the socket file it bound"


def test_unix_path_that_is_not_a_socket_is_refused(superd, probe, tmp_path):
    path = tmp_path / "file"
    path.write_text("precious")
    from conftest import start_superd
    d = start_superd(tmp_path, f"""
services:
  probe: {{listen: "unix:{path}", server: {probe}}}
""", wait=False)
    try:
        assert d.proc.wait(10) == 71
        assert "not a socket" in d.log.text() or "cannot-listen" in d.log.text()
        assert path.read_text() == "precious"
    finally:
        d.kill()


@pytest.mark.parametrize("stderr, expect_in_log", [("log", True), ("null", False)])
def test_stderr_modes(superd, tmp_path, stderr, expect_in_log):
    handler = python_handler(tmp_path, "noisy.py",
                             "import os, sys\nsys.stderr.write('complaint from handler\\n')\nos.write(1, b'ok')\n")
    d = superd(f"""
services:
  noisy: {{listen: "127.0.0.1:0", server: {handler}, stderr: {stderr}}}
""")
    with connect(d.address("noisy")) as sock:
        assert read_all(sock) == b"ok"
    d.log.wait_for(r"^exit service=noisy")
    if expect_in_log:
        line = d.log.wait_for(r"^stderr service=noisy")
        assert 'text="complaint from handler"' in line
    else:
        assert "complaint" not in d.log.text()


def test_a_long_stderr_line_is_cut_to_one_event(superd, tmp_path):
    handler = python_handler(tmp_path, "long.py",
                             "import sys\nsys.stderr.write('x' * 100000 + '\\nnext\\n')\n")
    d = superd(f"""
services:
  long: {{listen: "127.0.0.1:0", server: {handler}, stderr: log}}
""")
    with connect(d.address("long")) as sock:
        assert read_all(sock) == b""
    d.log.wait_for(r'^stderr service=long .*text=next$')
    cut = [l for l in d.log.lines if l.startswith("stderr service=long ")]
    assert len(cut) == 2 and cut[0].endswith("x" * 4096), [l[:80] for l in cut]


def test_the_port_already_in_use_is_named_with_its_errno(tmp_path):
    import socket
    from conftest import start_superd
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d = start_superd(tmp_path, f"""
services:
  e: {{listen: "127.0.0.1:{taken.getsockname()[1]}", internal: echo}}
""", wait=False)
        try:
            assert d.proc.wait(10) == 71
            d.log.wait_for(r'^cannot-listen level=error address=127\.0\.0\.1:\d+ error="EADDRINUSE: ')
        finally:
            d.kill()


def test_workdir_relative_to_config_folder(superd, probe, tmp_path):
    (tmp_path / "site").mkdir()
    d = superd(f"""
services:
  probe: {{listen: "127.0.0.1:0", server: {probe}, workdir: site}}
""")
    assert probe_over(d.address("probe"))["cwd"] == str(tmp_path / "site")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.parametrize("extra, path", [
    ("", "spawn server"),                       # switches once, then posix_spawns
    (", rlimits: {core: 0}", "setpriv"),        # rlimits: prlimit and setpriv per start
])
def test_user_switch_sets_uid_gid_and_groups(superd, public_dir, extra, path):
    import pwd
    script = os.path.join(public_dir, "ids.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nid -u; id -g; id -G; exec ls /proc/self/fd\n")
    os.chmod(script, 0o755)
    d = superd(f"""
services:
  ids: {{listen: "127.0.0.1:0", server: {script}, user: nobody, workdir: {public_dir}{extra}}}
""")
    if path == "spawn server":
        d.log.wait_for(r"^preload-ready service=ids")
    with connect(d.address("ids")) as sock:
        uid, gid, groups, *fds = read_all(sock).decode().splitlines()
    nobody = pwd.getpwnam("nobody")
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert sorted(map(int, groups.split())) == sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))
    assert sorted(map(int, fds)) == [0, 1, 2, 3], fds       # 3: ls's own directory


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as an ordinary user only")
def test_user_switch_without_root_is_a_config_error(tmp_path):
    import subprocess
    cfg = tmp_path / "s.yaml"
    cfg.write_text("services:\n  x: {listen: 0, server: /bin/cat, user: root}\n")
    r = subprocess.run([sys.executable, "-m", "superd", "--check", "-f", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "needs superd to run as root" in r.stderr
