"""superd's own log lines: their time, and syslog."""

import datetime
import os
import socket
import subprocess
import sys

from conftest import TIMEOUT


def run_superd(tmp_path, *args, env=None, stderr=subprocess.PIPE):
    """superd on a config that fails at once (a port taken), so it logs and exits."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "services.yaml"
    config.write_text(f'services:\n  a: {{listen: "127.0.0.1:{port}", server: /bin/cat}}\n')
    try:
        return subprocess.run([sys.executable, "-m", "superd", "-f", str(config), *args],
                              stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=TIMEOUT,
                              env={"PATH": "/usr/bin:/bin", **(env or {})})
    finally:
        taken.close()


def test_a_text_line_begins_with_its_rfc3339_time_in_utc(tmp_path):
    before = datetime.datetime.now(datetime.timezone.utc)
    run = run_superd(tmp_path)
    stamp, event = run.stderr.split()[:2]
    assert stamp.endswith("Z") and event == "cannot-listen"
    when = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - datetime.timedelta(seconds=1) <= when <= \
        datetime.datetime.now(datetime.timezone.utc)


def test_local_time_carries_its_offset_and_none_has_no_time(tmp_path):
    run = run_superd(tmp_path, "--log-time", "local", env={"TZ": "Asia/Kolkata"})
    assert run.stderr.split()[0].endswith("+05:30")
    run = run_superd(tmp_path, "--log-time", "none")
    assert run.stderr.startswith("cannot-listen level=error ")


def test_journald_stderr_gets_no_time_of_ours(tmp_path):
    with open(tmp_path / "err", "w+") as err:
        st = os.fstat(err.fileno())
        run_superd(tmp_path, stderr=err, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        err.seek(0)
        assert err.read().startswith("cannot-listen level=error ")


def test_syslog_sends_each_line_as_a_datagram_and_nothing_to_stderr(tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "log"))
    server.settimeout(TIMEOUT)
    run = run_superd(tmp_path, "--log", "syslog",
                     env={"SUPERD_SYSLOG_SOCKET": str(tmp_path / "log")})
    assert run.returncode == 71 and run.stderr == ""
    message = server.recv(65536).decode()
    assert message.startswith("<27>superd[")           # facility daemon, severity error
    assert "]: cannot-listen level=error " in message, "no time of ours: syslog stamps it"
    server.close()


def test_no_syslog_socket_falls_back_to_stderr_and_says_so(tmp_path):
    run = run_superd(tmp_path, "--log", "syslog",
                     env={"SUPERD_SYSLOG_SOCKET": str(tmp_path / "nothing-here")})
    assert run.returncode == 71
    lines = [line.split(None, 1)[1] for line in run.stderr.splitlines()]
    assert lines[0].startswith("syslog-unavailable level=error ")
    assert lines[1].startswith("cannot-listen level=error ")
