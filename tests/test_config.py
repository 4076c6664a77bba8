"""services.yaml validation: every error names file, line and key; --check."""

import subprocess
import sys
import textwrap

import pytest

from superd import config, values

GOOD_SERVER = "/bin/cat"


def load_text(tmp_path, text):
    path = tmp_path / "services.yaml"
    path.write_text(textwrap.dedent(text))
    return config.load(path)


def problems(tmp_path, text):
    data = tmp_path / "data.txt"
    data.write_text("not a program")
    data.chmod(0o644)
    text = text.replace("{tmp}", str(tmp_path))
    with pytest.raises(config.ConfigError) as info:
        load_text(tmp_path, text)
    return info.value.problems


@pytest.mark.parametrize("text, line, key, fragment", [
    ("services:\n  a: {listen: 0, server: /bin/cat, colour: red}\n", 2, "services.a.colour", "unknown key"),
    ("services:\n  a:\n    listen: 0\n    listen: 1\n    server: /bin/cat\n", 4, "listen", "duplicate key"),
    ("services:\n  a: {listen: nowhere, server: /bin/cat}\n", 2, "services.a.listen", "cannot parse address"),
    ("services:\n  a: {listen: '1.2.3:80', server: /bin/cat}\n", 2, "services.a.listen", "bad host"),
    ("services:\n  a: {listen: '[zz]:80', server: /bin/cat}\n", 2, "services.a.listen", "bad IPv6"),
    ("services:\n  a: {listen: 70000, server: /bin/cat}\n", 2, "services.a.listen", "bad port"),
    ("services:\n  a: {listen: 0}\n", 2, "services.a", "exactly one of 'server'"),
    ("services:\n  a: {listen: 0, server: /bin/cat, internal: echo}\n", 2, "services.a", "exactly one"),
    ("services:\n  a: {listen: 0, server: /no/such/program}\n", 2, "services.a.server", "no such program"),
    ("services:\n  a: {listen: 0, server: {tmp}/data.txt}\n", 2, "services.a.server", "not executable"),
    ("services:\n  a: {listen: 0, internal: gopher}\n", 2, "services.a.internal", "expected one of"),
    ("services:\n  a: {listen: 0, server: /bin/cat, protocol: sctp}\n", 2, "services.a.protocol", "expected one of"),
    ("services:\n  a: {listen: 0, server: /bin/cat, protocol: udp, mode: nowait}\n", 2, "services.a.mode", "UDP services are 'wait'"),
    ("services:\n  a: {listen: 0, server: /bin/cat, instances: 0}\n", 2, "services.a.instances", "above 0"),
    ("services:\n  a: {listen: 0, server: /bin/cat, instances: many}\n", 2, "services.a.instances", "whole number"),
    ("services:\n  a: {listen: 0, server: /bin/cat, timeout: -1}\n", 2, "services.a.timeout", "seconds"),
    ("services:\n  a: {listen: 0, server: /bin/cat, enabled: maybe}\n", 2, "services.a.enabled", "true or false"),
    ("services:\n  a: {listen: 0, server: /bin/cat, env: [A]}\n", 2, "services.a.env", "mapping"),
    ("services:\n  a: {listen: 0, server: /bin/cat, env: {'A B': 1}}\n", 2, "services.a.env", "environment variable name"),
    ("services:\n  a: {listen: 0, server: /bin/cat, args: oops}\n", 2, "services.a.args", "list of strings"),
    ("services:\n  a: {listen: 0, server: /bin/cat, user: no-such-user-xyz}\n", 2, "services.a.user", "no such user"),
    ("services:\n  a: {listen: 0, server: /bin/cat, group: no-such-group-xyz}\n", 2, "services.a.group", "no such group"),
    ("services:\n  a: {listen: 0, server: /bin/cat, workdir: /no/such/dir}\n", 2, "services.a.workdir", "no such directory"),
    ("services:\n  a: {listen: 0, server: /bin/cat, stderr: file}\n", 2, "services.a.stderr", "expected one of"),
    ("services:\n  a: {listen: 0, server: /bin/cat, only_from: [10.0.0.300/8]}\n", 2, "services.a.only_from", "not an address or CIDR"),
    ("services:\n  a: {listen: 0, server: /bin/cat, protocol: udp, only_from: [10.0.0.0/8]}\n", 2, "services.a.only_from", "nowait services only"),
    ("services:\n  a: {listen: 0, server: /bin/cat, per_source: 0}\n", 2, "services.a.per_source", "above 0"),
    ("services:\n  a: {listen: 0, server: /bin/cat, per_source_v6_prefix: 129}\n", 2, "services.a.per_source_v6_prefix", "1 to 128"),
    ("services:\n  a: {listen: 0, server: /bin/cat, per_source_rate: {limit: 5}}\n", 2, "services.a.per_source_rate", "missing per"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rate: {limit: 5, per: 1}}\n", 2, "services.a.rate", "missing pause"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rate: {limit: 5, per: 1, pause: 1, burst: 2}}\n", 2, "services.a.rate", "unknown field"),
    ("services:\n  a: {listen: 0, server: /bin/cat, max_load: high}\n", 2, "services.a.max_load", "number above 0"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rlimits: {files: 10}}\n", 2, "services.a.rlimits", "unknown limit"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rlimits: {as: 1X}}\n", 2, "services.a.rlimits", "expected a size"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rlimits: {nofile: -1}}\n", 2, "services.a.rlimits", "whole number"),
    ("services:\n  a: {listen: 0, server: /bin/cat, proxy_protocol: v3}\n", 2, "services.a.proxy_protocol", "expected one of"),
    ("services:\n  a: {listen: 0, server: /bin/cat, proxy_from: [10.0.0.0/8]}\n", 2, "services.a.proxy_from", "needs proxy_protocol"),
    ("services:\n  a: {listen: unix:/tmp/x.sock, server: /bin/cat, protocol: udp}\n", 2, "services.a.listen", "stream sockets"),
    ("defaults:\n  listen: 80\nservices:\n  a: {listen: 0, server: /bin/cat}\n", 2, "defaults.listen", "not allowed in defaults"),
    ("defaults:\n  instances: -3\nservices:\n  a: {listen: 0, server: /bin/cat}\n", 2, "defaults.instances", "above 0"),
    ("colour: red\nservices:\n  a: {listen: 0, server: /bin/cat}\n", 1, "colour", "unknown top-level key"),
    ("services: []\n", 1, "services", "mapping of service name"),
    ("services:\n  a: [1, 2]\n", 2, "services.a", "mapping of settings"),
    ("services:\n  a: {listen: 0, server: /bin/cat\n", 3, None, "YAML syntax"),
    ("- just\n- a list\n", 1, None, "expected a mapping"),
    ("services:\n  a: {listen: '127.0.0.1:7000', server: /bin/cat}\n  b: {listen: '127.0.0.1:7000', server: /bin/cat}\n",
     3, "services.b.listen", "overlaps 127.0.0.1:7000 of service 'a'"),
    ("services:\n  a: {listen: 7000, server: /bin/cat}\n  b: {listen: '127.0.0.1:7000', server: /bin/cat}\n",
     3, "services.b.listen", "overlaps 7000"),
    ("services:\n  a: {listen: '[::]:7000', server: /bin/cat}\n  b: {listen: '[::1]:7000', server: /bin/cat}\n",
     3, "services.b.listen", "overlaps"),
    ("services:\n  'a b': {listen: 0, server: /bin/cat}\n", 2, "services.a b", "service name"),
    ("services:\n  'a:b': {listen: 0, server: /bin/cat}\n", 2, "services.a:b", "service name"),
    ("services:\n  off: {listen: 0, server: /bin/cat}\n", 2, "services.False", "quote it"),
    ("services:\n  a: {listen: 0, server: /bin/cat, preload: true}\n", 2, "services.a.preload", "needs a Python handler"),
    ("services:\n  a: {listen: 0, server: /bin/cat, timeout: .inf}\n", 2, "services.a.timeout", "seconds above 0"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rate: {limit: 1, per: 1, pause: .nan}}\n", 2, "services.a.rate", "seconds above 0"),
    ("services:\n  a: {listen: 0, server: /bin/cat, max_load: .inf}\n", 2, "services.a.max_load", "number above 0"),
    ('services:\n  a: {listen: 0, server: /bin/cat, env: {A: "x\\0y"}}\n', 2, "services.a.env", "NUL byte"),
    ('services:\n  a: {listen: 0, server: /bin/cat, args: ["a\\0b"]}\n', 2, "services.a.args", "NUL byte"),
    ("services:\n  a: {listen: 0, server: /bin/cat, args: [--color, yes]}\n", 2, "services.a.args", "quote it"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rlimits: {nofile: 99999999999999999999999}}\n", 2, "services.a.rlimits", "largest limit"),
    ("services:\n  a: {listen: 0, server: /bin/cat, rlimits: {as: 99999999999G}}\n", 2, "services.a.rlimits", "largest limit"),
    ("services:\n  a: {listen: 0, server: /bin/cat, <<: [1, 2]}\n", 2, "<<", "merge key"),
    ("services:\n  a: {listen: !!int x, server: /bin/cat}\n", 2, None, "cannot be read as int"),
])
def test_each_error_names_line_and_key(tmp_path, text, line, key, fragment):
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    p = found[0]
    assert p.file == str(tmp_path / "services.yaml")
    assert p.line == line
    assert key is None or key in (p.key or "")
    assert fragment in p.message
    assert str(p).startswith(f"{p.file}:{line}: ")


def test_merge_keys_and_x_keys_share_settings_between_services(tmp_path):
    cfg = load_text(tmp_path, """
        x-small: &small
          instances: 5
          timeout: 30
          env: {A: "1"}
        services:
          a:
            <<: *small
            listen: 0
            server: /bin/cat
            timeout: 10
          b:
            <<: [*small, {instances: 9, stderr: null}]
            listen: 1
            server: /bin/cat
        """)
    a, b = cfg.services
    assert (a.instances, a.timeout) == (5, 10.0), "a key given beside the merge wins"
    assert (b.instances, b.timeout, b.stderr) == (5, 30.0, "null"), "the first mapping wins"
    assert ("A", "1") in a.base_env


def test_a_clean_file_resolves_everything(tmp_path):
    (tmp_path / "site").mkdir()
    cfg = load_text(tmp_path, f"""
        defaults:
          instances: 7
          env: {{LANG: C.UTF-8}}
        services:
          web:
            listen: [8080, "127.0.0.1:0", "[::1]:0", unix:web.sock]
            server: {GOOD_SERVER}
            args: [--root, site, 3]
            workdir: site
            timeout: 2.5
          echo-udp:
            listen: 127.0.0.1:0
            protocol: udp
            internal: echo
          "off":
            listen: 127.0.0.1:0
            server: {GOOD_SERVER}
            enabled: false
    """)
    web, udp, off = cfg.services
    assert [a.text for a in web.listen] == ["8080", "127.0.0.1:0", "[::1]:0", f"unix:{tmp_path}/web.sock"]
    assert web.argv == (GOOD_SERVER, "--root", "site", "3")
    assert web.workdir == str(tmp_path / "site")
    assert web.instances == 7 and web.timeout == 2.5 and web.mode == "nowait"
    assert ("LANG", "C.UTF-8") in web.base_env
    assert udp.mode == "wait" and udp.argv[-1] == "echo" and "classic" in udp.argv[-2]
    assert [s.name for s in cfg.enabled] == ["web", "echo-udp"]
    assert off.enabled is False


def test_protection_keys_resolve(tmp_path):
    import ipaddress
    cfg = load_text(tmp_path, """
        services:
          a:
            listen: 0
            server: /bin/cat
            only_from: [127.0.0.0/8, "::1", "::ffff:10.0.0.0/104"]
            no_access: 127.0.0.9
            per_source: 3
            per_source_rate: {limit: 20, per: 60}
            rate: {limit: 200, per: 1, pause: 10}
            max_load: 8
            rlimits: {nofile: 64, as: 1G, cpu: 60, core: 0, stack: unlimited}
            proxy_protocol: any
            proxy_from: [10.0.0.0/8]
            proxy_timeout: 2
    """)
    a = cfg.services[0]
    assert a.only_from == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"),
                           ipaddress.ip_network("10.0.0.0/8"))
    assert a.no_access == (ipaddress.ip_network("127.0.0.9/32"),)
    assert a.per_source == 3 and a.v6_prefix == 64
    assert a.per_source_rate == {"limit": 20, "per": 60.0}
    assert a.rate == {"limit": 200, "per": 1.0, "pause": 10.0}
    assert a.max_load == 8.0
    assert dict(a.rlimits) == {"nofile": 64, "as": 1 << 30, "cpu": 60, "core": 0, "stack": "unlimited"}
    assert a.proxy_protocol == "any" and a.proxy_timeout == 2.0


def test_address_families_that_do_not_overlap(tmp_path):
    cfg = load_text(tmp_path, """
        services:
          v4: {listen: "0.0.0.0:7002", server: /bin/cat}
          v6: {listen: "[::]:7002", server: /bin/cat}
          udp: {listen: 7002, server: /bin/cat, protocol: udp}
    """)
    assert len(cfg.services) == 3


def test_timeout_zero_undoes_a_default_and_numeric_user_is_accepted(tmp_path):
    import os
    cfg = load_text(tmp_path, f"""
        defaults: {{timeout: 30}}
        services:
          a: {{listen: 0, server: /bin/cat, timeout: 0, user: {os.geteuid()}}}
    """)
    assert cfg.services[0].timeout == 0
    assert cfg.services[0].uid in (-1, os.geteuid())


def test_an_error_in_defaults_is_reported_once(tmp_path):
    found = problems(tmp_path, "defaults: {instances: 0}\nservices:\n"
                               "  a: {listen: 0, server: /bin/cat}\n  b: {listen: 0, server: /bin/cat}\n")
    assert len(found) == 1 and found[0].key == "defaults.instances"


def test_disabled_services_may_share_an_address(tmp_path):
    cfg = load_text(tmp_path, """
        services:
          a: {listen: "127.0.0.1:7001", server: /bin/cat}
          b: {listen: "127.0.0.1:7001", server: /bin/cat, enabled: false}
    """)
    assert len(cfg.services) == 2


@pytest.mark.parametrize("text, expected", [
    ("8080", ("inet", "", 8080)), ("127.0.0.1:80", ("inet", "127.0.0.1", 80)),
    ("[::1]:80", ("inet", "::1", 80)), ("[0:0::1]:80", ("inet", "::1", 80)),
    ("localhost:9", ("inet", "127.0.0.1", 9)), ("*:9", ("inet", "0.0.0.0", 9)),
    (8080, ("inet", "", 8080)),
])
def test_address_forms(text, expected):
    a = values.address(text)
    assert (a.kind, a.host, a.port) == expected


@pytest.mark.parametrize("text, expected", [(0, 0), (512, 512), ("4K", 4096), ("1m", 1 << 20), ("2G", 2 << 30)])
def test_sizes(text, expected):
    assert values.size(text) == expected


def run_check(path):
    return subprocess.run([sys.executable, "-m", "superd", "--check", "-f", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_check_reports_every_error_with_its_line(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text(textwrap.dedent("""\
        services:
          one:
            listen: 127.0.0.1:0
            server: /no/such/program
          two:
            listen: not-an-address
            internal: echo
          three:
            listen: 0
            internal: echo
            colour: blue
          four:
            listen: 0
            server: /bin/cat
            instances: none
    """))
    r = run_check(path)
    assert r.returncode == 78
    lines = [l for l in r.stderr.splitlines() if l.startswith(str(path) + ":") and "error(s)" not in l]
    assert len(lines) == 4, r.stderr
    assert f"{path}:4: services.one.server: no such program" in r.stderr
    assert f"{path}:6: services.two.listen: cannot parse address" in r.stderr
    assert f"{path}:11: services.three.colour: unknown key" in r.stderr
    assert f"{path}:15: services.four.instances" in r.stderr
    assert r.stderr.endswith(f"{path}: 4 error(s)\n")


def test_check_names_the_file_alike_in_every_line(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("services:\n  a: {listen: 0}\n")
    monkeypatch.chdir(tmp_path)
    r = run_check("bad.yaml")                   # as typed: relative
    assert r.returncode == 78
    assert {line.split(":")[0] for line in r.stderr.splitlines()} == {str(tmp_path / "bad.yaml")}


def test_check_clean_file_exits_0(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text("services:\n  e: {listen: 0, internal: echo}\n")
    r = run_check(path)
    assert r.returncode == 0, r.stderr


def test_check_missing_file_is_a_config_error(tmp_path):
    r = run_check(tmp_path / "absent.yaml")
    assert r.returncode == 78 and "cannot read" in r.stderr


@pytest.mark.parametrize("argv", [["--bogus"], ["--log-format", "xml"], ["--grace", "soon"],
                                  ["--grace", "nan"], ["--grace", "inf"]])
def test_usage_errors_exit_64(argv):
    r = subprocess.run([sys.executable, "-m", "superd", *argv], capture_output=True, timeout=30)
    assert r.returncode == 64


def test_version():
    r = subprocess.run([sys.executable, "-m", "superd", "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("superd ")


def test_shipped_configs_are_valid():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    for path in (root / "etc/services.yaml", root / "superd/default.yaml"):
        r = run_check(path)
        assert r.returncode == 0, (path, r.stderr)


def test_internal_handlers_run_from_a_fresh_private_bytecode_cache(tmp_path, monkeypatch):
    import os
    from superd import handlers_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "h.py"
    source.write_text("print('one')\n")
    first = handlers_path.compiled(str(source))
    assert first.endswith(".pyc") and first.startswith(str(tmp_path / "cache" / "superd"))
    assert oct((tmp_path / "cache" / "superd").stat().st_mode & 0o777) == "0o700"
    r = subprocess.run([sys.executable, "-S", first], capture_output=True, text=True, timeout=30)
    assert r.stdout == "one\n"
    source.write_text("print('two')\n")
    os.utime(source, ns=(os.stat(first).st_mtime_ns + 10**9,) * 2)
    second = handlers_path.compiled(str(source))
    r = subprocess.run([sys.executable, "-S", second], capture_output=True, text=True, timeout=30)
    assert second == first and r.stdout == "two\n", "a changed handler is compiled again"
    assert config_argv_of(tmp_path, "internal: httpd")[2].endswith(".pyc")


def test_internal_handler_for_another_user_runs_its_source(tmp_path):
    import os
    if os.geteuid() != 0:
        pytest.skip("switching users needs root")
    assert config_argv_of(tmp_path, "internal: httpd, user: nobody")[2].endswith("httpd.py")


def config_argv_of(tmp_path, settings):
    return load_text(tmp_path, f"services:\n  s: {{listen: 0, {settings}}}\n").services[0].argv


def test_every_bad_entry_of_a_list_or_mapping_is_named(tmp_path):
    found = problems(tmp_path, "services:\n  a: {listen: 0, server: /bin/cat, "
                               "rlimits: {files: 1, as: 1X, nofile: 10}, only_from: [10.0.0.300, '::1', nowhere]}\n")
    messages = {p.key: p.message for p in found}
    assert "unknown limit 'files'" in messages["services.a.rlimits"]
    assert "expected a size" in messages["services.a.rlimits"]
    assert "10.0.0.300" in messages["services.a.only_from"]
    assert "nowhere" in messages["services.a.only_from"]
