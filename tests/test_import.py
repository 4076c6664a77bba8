"""`superd import`: inetd.conf and xinetd files to services.yaml.

Every test runs the real command (`python -m superd import`) and reads what
it wrote: the YAML on stdout (which `superd --check` must accept), warnings
and errors on stderr, each naming file:line.  The files Debian's xinetd
package ships are imported as they are on this machine (.ci/run installs
xinetd).  How an imported service answers next to xinetd is
test_import_xinetd.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TIMEOUT = 60
XINETD_D = Path("/etc/xinetd.d")


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "superd", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def imported(tmp_path, *files):
    """(services.yaml as data, stderr) of a successful import, after --check passed it."""
    result = run("import", *map(str, files), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = tmp_path / "imported.yaml"
    out.write_text(result.stdout)
    check = run("--check", "-f", str(out), cwd=tmp_path)
    assert check.returncode == 0, check.stderr + result.stdout
    return yaml.safe_load(result.stdout), result.stderr, result.stdout


def refused(tmp_path, *files):
    """stderr of an import that must fail: exit 78, nothing on stdout, no traceback."""
    result = run("import", *map(str, files), cwd=tmp_path)
    assert result.returncode == 78, result.stdout + result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    return result.stderr


def xinetd_service(body, name="demo"):
    return f"service {name}\n{{\n{body}\n}}\n"


BASE = "\tsocket_type = stream\n\twait = no\n\tport = 7070\n\tserver = /bin/cat\n"


# -- Debian's xinetd files -------------------------------------------------

def debian_files():
    assert (XINETD_D / "echo").is_file(), "xinetd is not installed (.ci/run installs it)"
    return sorted(p for p in XINETD_D.iterdir() if "." not in p.name)


def test_debian_xinetd_conf_with_its_includedir(tmp_path):
    files = debian_files()
    data, err, text = imported(tmp_path, "/etc/xinetd.conf")
    for path in files:                                   # every file is read, and said so
        assert f"#   {path} (included from /etc/xinetd.conf:" in text
    services = data["services"]
    # each classic service, TCP and UDP, as superd's bundled handler
    for name in ("echo", "discard", "daytime", "chargen", "time"):
        assert services[f"{name}-stream"]["internal"] == name
        assert services[f"{name}-dgram"] == {"listen": services[f"{name}-dgram"]["listen"],
                                             "protocol": "udp", "internal": name, "enabled": False}
        assert "user" not in services[f"{name}-stream"]   # xinetd ignores it for internal services
    assert services["echo-stream"]["listen"] == "0.0.0.0:7"      # port from /etc/services
    assert services["chargen-dgram-2"]["listen"] == "0.0.0.0:19"  # the id is used twice by Debian
    assert all(s["enabled"] is False for s in services.values())  # Debian ships them off
    # xinetd's own 'servers' and 'services' have no equivalent: commented out, warned
    assert "servers" not in services and "services" not in services
    assert f"{XINETD_D}/servers:4: warning: servers: service left out" in err
    assert f"{XINETD_D}/chargen-udp:4: warning: chargen-dgram: the name is taken" in err


def test_debian_xinetd_d_folder_and_single_file(tmp_path):
    debian_files()
    whole, _, _ = imported(tmp_path, XINETD_D)
    conf, _, _ = imported(tmp_path, "/etc/xinetd.conf")
    assert whole["services"] == conf["services"]
    one, err, _ = imported(tmp_path, XINETD_D / "echo")
    assert sorted(one["services"]) == ["echo-dgram", "echo-stream"]
    assert err == ""


# -- xinetd attributes, one at a time --------------------------------------

@pytest.mark.parametrize("lines, expected", [
    ("", {"listen": "0.0.0.0:7070", "server": "/bin/cat"}),
    ("\tbind = 127.0.0.1", {"listen": "127.0.0.1:7070"}),
    ("\tinterface = ::1", {"listen": "[::1]:7070"}),
    ("\tflags = IPv6", {"listen": "7070"}),
    ("\tserver_args = -u -v", {"args": ["-u", "-v"]}),
    ("\tuser = nobody\n\tgroup = nogroup", {"user": "nobody", "group": "nogroup"}),
    ("\tinstances = 7\n\tper_source = 3", {"instances": 7, "per_source": 3}),
    ("\tcps = 50 10", {"rate": {"limit": 50, "per": 1, "pause": 10}}),
    ("\tmax_load = 2.5", {"max_load": 2.5}),
    ("\tonly_from = 127.0.0.1 10.0.0.0 192.168.{1,2} ::1",
     {"only_from": ["127.0.0.1/32", "10.0.0.0/8", "192.168.1.0/24", "192.168.2.0/24", "::1/128"]}),
    ("\tno_access = 10.1.2.3/16", {"no_access": ["10.1.0.0/16"]}),
    ("\tenv = LANG=C TZ=UTC\n\tpassenv = HOME", {"env": {"LANG": "C", "TZ": "UTC"}, "passenv": ["HOME"]}),
    ("\tdisable = yes", {"enabled": False}),
    ("\tdisable = no", {"server": "/bin/cat"}),
    ("\trlimit_as = 64M\n\trlimit_cpu = 30\n\trlimit_files = UNLIMITED\n\trlimit_core = 0",
     {"rlimits": {"as": "64M", "cpu": 30, "nofile": "unlimited", "core": 0}}),
    ("\tonly_from =", {"enabled": False}),          # xinetd: nobody; superd's empty list is everyone
    ("\tinstances = UNLIMITED\n\tper_source = UNLIMITED", {"instances": None, "per_source": None}),
    ("\tgroups = yes", {"server": "/bin/cat"}),     # superd's way: the user's groups
])
def test_xinetd_attribute_maps(tmp_path, lines, expected):
    conf = tmp_path / "demo"
    conf.write_text(xinetd_service(BASE + lines))
    data, err, _ = imported(tmp_path, conf)
    service = data["services"]["demo"]
    assert {k: service.get(k) for k in expected} == expected
    assert err == ""


@pytest.mark.parametrize("line, fragment", [
    ("\tlog_on_success = PID HOST", "log_on_success = PID HOST (superd logs"),
    ("\tbanner = /etc/issue", "banner = /etc/issue (superd never writes"),
    ("\tredirect = 10.0.0.1 80", "redirect"),
    ("\taccess_times = 8:00-17:00", "access_times"),
    ("\tdeny_time = 60", "deny_time"),
    ("\tnice = 10", "nice = 10"),
    ("\tumask = 022", "umask"),
    ("\tflags = KEEPALIVE", "flags KEEPALIVE"),
    ("\tonly_from = 127.0.0.1 gateway.example.com", "only_from gateway.example.com"),
    ("\tinstances = lots", "instances: expected a whole number"),
    ("\tcolour = blue", "not an xinetd attribute"),
])
def test_xinetd_attribute_without_equivalent_is_a_comment_and_a_warning(tmp_path, line, fragment):
    conf = tmp_path / "demo"
    conf.write_text(xinetd_service(BASE + line))
    data, err, text = imported(tmp_path, conf)
    number = 7                                     # service, {, four BASE lines, then this one
    assert f"{conf}:{number}: warning: demo: not imported: " in err and fragment in err
    assert f"# not imported: {fragment}" in text or fragment in text
    assert data["services"]["demo"]["server"] == "/bin/cat"     # the rest is still imported


def test_xinetd_defaults_plus_equals_and_switches(tmp_path):
    conf = tmp_path / "xinetd.conf"
    conf.write_text("defaults\n{\n\tinstances = 30\n\tonly_from = 127.0.0.1\n\tbind = 127.0.0.1\n"
                    "\tdisabled = b\n\tlog_type = SYSLOG daemon\n}\n"
                    + xinetd_service(BASE + "\tonly_from += 10.0.0.0", "a")
                    + xinetd_service(BASE.replace("7070", "7071") + "\tno_access += 10.9.0.0", "b"))
    data, err, _ = imported(tmp_path, conf)
    assert data["defaults"] == {"instances": 30, "only_from": ["127.0.0.1/32"]}
    a, b = data["services"]["a"], data["services"]["b"]
    assert a["listen"] == "127.0.0.1:7070" and a["only_from"] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert b["enabled"] is False and b["no_access"] == ["10.9.0.0/16"]
    assert f"{conf}:7: warning: defaults: not imported: log_type" in err


def test_xinetd_defaults_enabled_list_turns_the_others_off(tmp_path):
    conf = tmp_path / "xinetd.conf"
    conf.write_text("defaults\n{\n\tenabled = b\n}\n" + xinetd_service(BASE, "a")
                    + xinetd_service(BASE.replace("7070", "7071"), "b"))
    data, _, text = imported(tmp_path, conf)
    assert data["services"]["a"]["enabled"] is False and "enabled" not in data["services"]["b"]
    assert "enabled: false    # defaults: not in enabled" in text


def test_xinetd_tcpd_and_nameinargs(tmp_path):
    conf = tmp_path / "demo"
    conf.write_text(xinetd_service("\tsocket_type = stream\n\twait = no\n\tport = 7070\n"
                                   "\tserver = /usr/sbin/tcpd\n\tserver_args = /bin/cat -u\n"
                                   "\tflags = NAMEINARGS"))
    data, err, _ = imported(tmp_path, conf)
    assert data["services"]["demo"]["server"] == "/bin/cat"
    assert data["services"]["demo"]["args"] == ["-u"]
    assert f"{conf}:6: warning: demo: not imported: tcpd (hosts.allow and hosts.deny" in err


def test_xinetd_service_superd_cannot_run_is_commented_out(tmp_path):
    conf = tmp_path / "xinetd.conf"
    conf.write_text(xinetd_service(BASE, "good")
                    + xinetd_service(BASE.replace("/bin/cat", "/no/such/program"), "missing")
                    + xinetd_service(BASE, "twin")                        # same address as good
                    + xinetd_service("\ttype = RPC\n\tsocket_type = stream\n\twait = no", "rpc"))
    data, err, text = imported(tmp_path, conf)
    assert list(data["services"]) == ["good"]
    assert f"{conf}:9: warning: missing: service left out: superd --check says: no such program" in err
    assert f"{conf}:17: warning: twin: service left out: superd --check says: 0.0.0.0:7070 overlaps" in err
    assert f"{conf}:27: warning: rpc: service left out" in err
    assert "  # missing:\n  #   listen: 0.0.0.0:7070\n" in text        # uncomment once installed


# -- inetd.conf --------------------------------------------------------------

INETD_CONF = """\
# /etc/inetd.conf:  see inetd(8) for further informations.
#
# <service_name> <sock_type> <proto> <flags> <user> <server_path> <args>
#
#:INTERNAL: Internal services
discard		stream	tcp	nowait	root	internal
discard		dgram	udp	wait	root	internal
#time		stream	tcp	nowait	root	internal

#:STANDARD: These are standard services.
#<off># telnet	stream	tcp	nowait	telnetd	/usr/sbin/tcpd	/usr/sbin/in.telnetd
ftp		stream	tcp	nowait	root	/usr/sbin/tcpd	/usr/sbin/in.ftpd -l
finger		stream	tcp	nowait.40	nobody	/usr/sbin/tcpd	/bin/cat
talk		dgram	udp	wait	nobody.tty	/usr/sbin/tcpd	/bin/cat
127.0.0.1:8013	stream	tcp	nowait	nobody:nogroup	/bin/date	date -u
ident		stream	tcp6	wait	nobody	/bin/cat	identd -e
rstatd/1-3	dgram	rpc/udp	wait	root	/usr/sbin/tcpd	rpc.rstatd
"""


def test_inetd_conf_with_tcpd_lines(tmp_path):
    conf = tmp_path / "inetd.conf"
    conf.write_text(INETD_CONF)
    data, err, text = imported(tmp_path, conf)
    s = data["services"]
    assert s["discard"] == {"listen": "0.0.0.0:9", "internal": "discard"}
    assert s["discard-udp"] == {"listen": "0.0.0.0:9", "protocol": "udp", "internal": "discard"}
    # tcpd taken out: superd runs what tcpd would have run, and says what is lost
    assert s["finger"] == {"listen": "0.0.0.0:79", "rate": {"limit": 40, "per": 60, "pause": 600},
                           "server": "/bin/cat", "user": "nobody"}
    assert s["talk"] == {"listen": "0.0.0.0:517", "protocol": "udp", "server": "/bin/cat",
                         "user": "nobody", "group": "tty"}
    assert f"{conf}:13: warning: finger: not imported: tcpd (hosts.allow and hosts.deny" in err
    assert s["8013"] == {"listen": "127.0.0.1:8013", "server": "/bin/date", "args": ["-u"],
                         "user": "nobody", "group": "nogroup"}
    assert s["ident"] == {"listen": "[::]:113", "mode": "wait", "server": "/bin/cat",
                          "args": ["-e"], "user": "nobody"}
    # not installed here, or not servable: commented out with the reason, and warned
    assert "telnet" not in s and "ftp" not in s and "rstatd" not in s
    assert "  #   server: /usr/sbin/in.telnetd\n" in text
    assert "  #   enabled: false    # turned off by update-inetd" in text
    assert "  #   args: [-l]\n" in text
    assert f"{conf}:12: warning: ftp: service left out: superd --check says: no such program: /usr/sbin/in.ftpd" in err
    assert f"{conf}:17: warning: rstatd: service left out: an RPC service" in err


@pytest.mark.parametrize("line, expected", [
    ("7070 stream tcp nowait nobody /bin/cat cat -u", {"listen": "0.0.0.0:7070", "args": ["-u"]}),
    ("[::1]:7070 stream tcp6 nowait nobody /bin/cat cat", {"listen": "[::1]:7070"}),
    ("127.0.0.1,127.0.0.2:7070 stream tcp nowait nobody /bin/cat cat",      # OpenBSD's host list
     {"listen": ["127.0.0.1:7070", "127.0.0.2:7070"]}),
    ("7070 stream tcp46 nowait nobody /bin/cat cat", {"listen": "7070"}),
    ("7070 dgram udp wait nobody /bin/cat cat", {"listen": "0.0.0.0:7070", "protocol": "udp"}),
    ("7070 stream tcp nowait/10/30/2 nobody /bin/cat cat",
     {"instances": 10, "per_source_rate": {"limit": 30, "per": 60}, "per_source": 2}),
    ("7070 stream tcp nowait nobody:nogroup/daemon /bin/cat cat", {"user": "nobody", "group": "nogroup"}),
    ("{tmp}/sock stream unix nowait nobody /bin/cat cat", {"listen": "unix:{tmp}/sock"}),
])
def test_inetd_fields_map(tmp_path, line, expected):
    conf = tmp_path / "inetd.conf"
    conf.write_text(line.replace("{tmp}", str(tmp_path)) + "\n")
    data, err, _ = imported(tmp_path, conf)
    (service,) = data["services"].values()
    expected = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v
                for k, v in expected.items()}
    assert {k: service.get(k) for k in expected} == expected
    if "/daemon" in line:
        assert f"{conf}:1: warning: " in err and "login class daemon" in err


@pytest.mark.parametrize("line, why", [
    ("ping raw icmp nowait root /bin/cat cat", "socket type raw"),
    ("7070 stream tcp/ttcp nowait nobody /bin/cat cat", "protocol tcp/ttcp"),
    ("tcpmux/+date stream tcp nowait nobody /bin/date date", "a TCPMUX service (RFC 1078)"),
])
def test_inetd_lines_superd_cannot_serve_are_left_out_not_errors(tmp_path, line, why):
    conf = tmp_path / "inetd.conf"
    conf.write_text("7071 stream tcp nowait nobody /bin/cat cat\n" + line + "\n")
    data, err, text = imported(tmp_path, conf)
    assert list(data["services"]) == ["7071"], "the rest of the file is still imported"
    assert f"{conf}:2: warning: " in err and f"service left out: {why}" in err
    assert f"# service left out: {why}" in text or why in text


def test_an_ipsec_policy_line_is_a_warning(tmp_path):
    conf = tmp_path / "inetd.conf"
    conf.write_text("#@ ipsec in\n7071 stream tcp nowait nobody /bin/cat cat\n")
    data, err, _ = imported(tmp_path, conf)
    assert list(data["services"]) == ["7071"]
    assert f"{conf}:1: warning: not imported: #@ IPsec policy line" in err


def test_xinetd_service_address_wins_over_the_defaults_bind(tmp_path):
    conf = tmp_path / "xinetd.conf"
    conf.write_text("defaults\n{\n\tbind = 127.0.0.1\n}\n"
                    + xinetd_service(BASE + "\tinterface = 127.0.0.2", "own")
                    + xinetd_service(BASE.replace("7070", "7071"), "inherits"))
    data, _, _ = imported(tmp_path, conf)
    assert data["services"]["own"]["listen"] == "127.0.0.2:7070"
    assert data["services"]["inherits"]["listen"] == "127.0.0.1:7071"


def test_xinetd_unlimited_in_a_service_lifts_the_defaults_limit(tmp_path):
    conf = tmp_path / "xinetd.conf"
    conf.write_text("defaults\n{\n\tinstances = 60\n\tper_source = 5\n}\n"
                    + xinetd_service(BASE + "\tinstances = UNLIMITED\n\tper_source = UNLIMITED", "free")
                    + xinetd_service(BASE.replace("7070", "7071") + "\tinstances = 500\n"
                                     "\tper_source = UNLIMITED", "wide")
                    + xinetd_service(BASE.replace("7070", "7072"), "bound"))
    data, _, text = imported(tmp_path, conf)
    assert data["defaults"] == {"instances": 60, "per_source": 5}
    free, wide, bound = (data["services"][n] for n in ("free", "wide", "bound"))
    assert (free["instances"], free["per_source"]) == (200, 200)
    assert (wide["instances"], wide["per_source"]) == (500, 500)
    assert "instances" not in bound and "per_source" not in bound
    assert "UNLIMITED here over defaults' 60" in text


def test_inetd_host_line_sets_the_host_of_the_lines_below(tmp_path):
    conf = tmp_path / "inetd.conf"
    conf.write_text("127.0.0.1:\n7070 stream tcp nowait nobody /bin/cat cat\n"
                    "*:\n7071 stream tcp nowait nobody /bin/cat cat\n")
    data, _, _ = imported(tmp_path, conf)
    assert [s["listen"] for s in data["services"].values()] == ["127.0.0.1:7070", "0.0.0.0:7071"]


def test_udp_nowait_becomes_wait_with_a_warning(tmp_path):
    conf = tmp_path / "inetd.conf"
    conf.write_text("7070 dgram udp nowait nobody /bin/cat cat\n")
    data, err, _ = imported(tmp_path, conf)
    assert "mode" not in data["services"]["7070"]
    assert f"{conf}:1: warning: 7070: a UDP service is 'wait' in superd" in err


def test_per_connection_keys_of_a_wait_service_are_notes(tmp_path):
    """superd refuses only_from and per_source in wait mode; the service is still written."""
    conf = tmp_path / "tftp"
    conf.write_text(xinetd_service("\tsocket_type = dgram\n\twait = yes\n\tport = 6969\n"
                                   "\tserver = /bin/cat\n\tonly_from = 10.0.0.0/8\n\tper_source = 3",
                                   "tftp"))
    data, err, text = imported(tmp_path, conf)
    assert data["services"]["tftp"] == {"listen": "0.0.0.0:6969", "protocol": "udp", "server": "/bin/cat"}
    assert f"{conf}:7: warning: tftp: not imported: only_from: [10.0.0.0/8] (superd applies it" in err
    assert f"{conf}:8: warning: tftp: not imported: per_source: 3" in err


def test_redirect_is_left_out_saying_why(tmp_path):
    conf = tmp_path / "fwd"
    conf.write_text(xinetd_service("\tsocket_type = stream\n\twait = no\n\tport = 7777\n"
                                   "\tredirect = 10.0.0.1 80", "fwd")
                    + xinetd_service(BASE, "kept"))
    data, err, _ = imported(tmp_path, conf)
    assert list(data["services"]) == ["kept"]
    assert f"{conf}:6: warning: fwd: service left out: redirect: superd does not forward" in err


def test_format_option_reads_a_file_as_told(tmp_path):
    conf = tmp_path / "odd"
    conf.write_text("# auto: xinetd's, from its first line that is not a comment\n" + xinetd_service(BASE))
    assert "demo" in imported(tmp_path, "--format", "xinetd", conf)[0]["services"]
    err = refused(tmp_path, "--format", "inetd", conf)
    assert f"{conf}:2: expected SERVICE SOCKET-TYPE" in err


def test_inetd_and_xinetd_together(tmp_path):
    inetd = tmp_path / "inetd.conf"
    inetd.write_text("echo stream tcp nowait root internal\n")
    xinetd = tmp_path / "x"
    xinetd.write_text(xinetd_service(BASE))
    data, _, _ = imported(tmp_path, inetd, xinetd)
    assert sorted(data["services"]) == ["demo", "echo"]


# -- hostile input -----------------------------------------------------------

def test_garbage_lines_name_file_and_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello world\n\nthis is not a configuration\n")
    err = refused(tmp_path, text)
    assert f"{text}:1: expected SERVICE SOCKET-TYPE PROTOCOL WAIT USER PROGRAM" in err
    assert f"{text}:3: expected SERVICE" in err
    conf = tmp_path / "xinetd.conf"
    conf.write_text("service a\n{\n\tport = 1\n\tthis is garbage\n}\n}\nservice b\n\tport = 2\n"
                    "defaults\n{\n")
    err = refused(tmp_path, conf)
    assert f"{conf}:4: expected ATTRIBUTE = VALUE or '}}', got 'this is garbage'" in err
    assert f"{conf}:6: expected 'service NAME'" in err
    assert f"{conf}:8: expected '{{' on the line after service b (line 7)" in err
    assert f"{conf}:9: defaults is not closed (no '}}' before the end of the file)" in err


@pytest.mark.parametrize("make, fragment", [
    (lambda d: (d / "f").write_bytes(os.urandom(4096) + b"\xff"), "f:1: not UTF-8 text"),
    (lambda d: (d / "f").write_bytes(b"echo stream tcp nowait root internal\n" * 30000),
     "f:1: larger than 1 MiB"),
    (lambda d: (d / "f").write_text("service a\n{\n\tserver_args = " + "x" * 5000 + "\n}\n"),
     "f:3: line longer than 4096 characters"),
    (lambda d: (d / "f").write_text("service a\n{\n\tport = 7\x00\n}\n"), "f:3: control character"),
    (lambda d: (d / "f").write_text("echo stream tcp nowait root internal\n" * 2500), "more than 2000 services"),
    (lambda d: (d / "f").write_text("include missing.conf\n"), "f:1: cannot read"),
    (lambda d: (d / "f").write_text("includedir nowhere\n"), "f:1: cannot read folder"),
    (lambda d: ((d / "f").write_text("include sub\n"), (d / "sub").mkdir()), "f:1: cannot read"),
    (lambda d: ((d / "f").write_text("include fifo\n"), os.mkfifo(d / "fifo")), "not a regular file"),
    (lambda d: ((d / "f").write_text("include g\n"), (d / "g").write_text("include f\n")),
     "g:1: include loop: f -> g -> f"),
    (lambda d: (d / "f").write_text("include f\n"), "f:1: include loop: f -> f"),
])
def test_hostile_input_is_an_error_with_file_and_line(tmp_path, make, fragment):
    make(tmp_path)
    err = refused(tmp_path, tmp_path / "f")
    assert fragment in err, err
    assert len(err) < 10_000                     # bounded, whatever the input


def test_file_names_with_control_characters_stay_on_their_line(tmp_path):
    folder = tmp_path / "xinetd.d"
    folder.mkdir()
    (folder / "evil\nservices:\x1b[2J").write_text(xinetd_service(BASE + "\tnice = 5"))
    data, err, text = imported(tmp_path, folder)
    assert list(data["services"]) == ["demo"]
    assert "\x1b" not in err + text and "evil\\nservices:\\x1b[2J" in err


def test_deep_include_chains_and_many_errors_stop(tmp_path):
    for n in range(20):
        (tmp_path / f"f{n}").write_text(f"include f{n + 1}\n")
    (tmp_path / "f20").write_text(xinetd_service(BASE))
    assert "f15:1: includes nest deeper than 16 files" in refused(tmp_path, tmp_path / "f0")
    garbage = tmp_path / "garbage"
    garbage.write_text("no\n" * 10_000)
    err = refused(tmp_path, garbage)
    assert f"{garbage}:50: too many errors; stopped reading" in err
    assert len(err.splitlines()) < 60


def test_unreadable_file_and_bad_usage(tmp_path):
    assert "cannot read" in refused(tmp_path, tmp_path / "missing")
    assert "not a regular file" in refused(tmp_path, "/dev/zero")
    assert run("import", cwd=tmp_path).returncode == 64


def test_plain_superd_still_takes_its_options(tmp_path):
    """`import` is a word before the options; superd's own command line is unchanged."""
    conf = tmp_path / "import"                    # even a services file named 'import'
    conf.write_text("services:\n  a: {listen: 0, server: /bin/cat}\n")
    result = run("--check", "-f", "import", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert run("--check", "-f", str(tmp_path / "nothing"), cwd=tmp_path).returncode == 78


def test_superd_8_names_every_xinetd_attribute_the_importer_knows():
    from superd import importer_map, importer_xinetd_map as xmap
    text = (Path(__file__).resolve().parent.parent / "man/superd.8").read_text()
    section = text[text.index(".SH IMPORTING"):text.index(".SH SIGNALS")]
    section = section.replace("\\-", "-").replace("\\fB", "").replace("\\fP", "")
    known = (set(xmap.SIMPLE) | set(xmap.UNMAPPED) | xmap.CORE | set(importer_map.RLIMITS)
             | {"enabled", "disabled"}) - {"include", "includedir"}
    missing = sorted(name for name in known if name not in section)
    assert missing == [], f"superd(8) IMPORTING does not name {missing}"
