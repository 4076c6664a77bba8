"""The shipped systemd units and HAProxy configuration are valid for the
tools that read them (systemd 252 on Debian 12, its haproxy)."""

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUPERD = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "superd"


@pytest.mark.parametrize("units", [("superd.service", "superd.socket"),
                                   ("superd-httpd-wait.service", "superd-httpd-wait.socket")])
def test_systemd_analyze_verify_passes(tmp_path, units):
    assert shutil.which("systemd-analyze"), "systemd-analyze (Debian's systemd) is missing"
    for name in units:
        text = (ROOT / "etc/systemd" / name).read_text()
        # where the unit names the installed program, this checkout's stands in
        text = text.replace("/usr/local/bin/superd-httpd", str(SUPERD) + "-httpd")
        text = text.replace("/usr/local/bin/superd", str(SUPERD))
        (tmp_path / name).write_text(text)
    run = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in units)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == "", run.stderr


def test_the_service_is_a_notify_service_that_hears_its_successor():
    text = (ROOT / "etc/systemd/superd.service").read_text()
    for line in ("Type=notify", "NotifyAccess=all", "FileDescriptorStoreMax=",
                 "ExecReload=/bin/kill -HUP $MAINPID", "RuntimeDirectory=superd"):
        assert line in text


def test_haproxy_accepts_the_shipped_configuration():
    assert shutil.which("haproxy"), "haproxy (Debian's package, .ci/run installs it) is missing"
    run = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "etc/haproxy/haproxy.cfg")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_status_carries_a_one_line_summary(superd):
    d = superd("""
services:
  a: {listen: "127.0.0.1:0", server: /bin/cat}
  b: {listen: "127.0.0.1:0", server: /bin/cat}
""")
    d.send(signal.SIGHUP)
    message = d.wait_notify("READY=1")
    assert "STATUS=2 services, 0 running, 0 refused" in message.split("\n")
