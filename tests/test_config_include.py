"""What xinetd and inetd users reach for in services.yaml: `listen` by service
name from /etc/services, `include` of a folder of per-service files (read
again on HUP; problems name the included file and line), and an unknown key
that names the key meant.

Loading is tested in-process with config.load (table-driven); the reload
with a real superd from conftest's `superd` fixture, on port 0.
"""

import socket
import textwrap

import pytest

from conftest import connect
from superd import config


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(path):
    with pytest.raises(config.ConfigError) as info:
        config.load(path)
    return info.value.problems


# -- listen: service names --------------------------------------------------

@pytest.mark.parametrize("listen, expected", [
    ("daytime", lambda: str(socket.getservbyname("daytime"))),
    ("127.0.0.1:http", lambda: f"127.0.0.1:{socket.getservbyname('http')}"),
    ("'[::1]:ssh'", lambda: f"[::1]:{socket.getservbyname('ssh')}"),
    ("localhost:echo", lambda: f"127.0.0.1:{socket.getservbyname('echo')}"),
    ("'*:finger'", lambda: f"0.0.0.0:{socket.getservbyname('finger')}"),
    ("[8080, 'domain']", lambda: f"8080,{socket.getservbyname('domain')}"),
])
def test_listen_takes_names_from_etc_services(tmp_path, listen, expected):
    path = write(tmp_path / "s.yaml", f"services:\n  a: {{listen: {listen}, server: /bin/cat}}\n")
    (service,) = config.load(path).services
    assert ",".join(a.text for a in service.listen) == expected()


@pytest.mark.parametrize("listen, fragment", [
    ("no-such-service-xyz", "cannot parse address 'no-such-service-xyz': not a port, nor a service name"),
    ("127.0.0.1:no-such-service-xyz", "bad port 'no-such-service-xyz': not a number, nor a service name"),
    ("'[::1]:nope-xyz'", "bad port 'nope-xyz'"),
])
def test_listen_with_an_unknown_name_is_an_error_with_its_line(tmp_path, listen, fragment):
    path = write(tmp_path / "s.yaml", f"services:\n  a:\n    server: /bin/cat\n    listen: {listen}\n")
    (p,) = problems(path)
    assert (p.file, p.line, p.key) == (str(path), 4, "services.a.listen")
    assert fragment in p.message


# -- an unknown key names the one meant -------------------------------------

@pytest.mark.parametrize("key, message", [
    ("instance", "unknown key (did you mean 'instances'?)"),
    ("listne", "unknown key (did you mean 'listen'?)"),
    ("per_sorce", "unknown key (did you mean 'per_source'?)"),
    ("server_args", "unknown key (xinetd's server_args is args here; superd import converts"),
    ("socket_type", "unknown key (xinetd's socket_type is protocol here"),
    ("colour", "unknown key"),
])
def test_unknown_key_suggests_the_nearest(tmp_path, key, message):
    path = write(tmp_path / "s.yaml", f"services:\n  a:\n    listen: 0\n    server: /bin/cat\n    {key}: 1\n")
    (p,) = problems(path)
    assert (p.line, p.key) == (5, f"services.a.{key}")
    assert p.message.startswith(message), p.message
    if key == "colour":
        assert p.message == "unknown key"


def test_unknown_top_level_and_defaults_keys_suggest_too(tmp_path):
    path = write(tmp_path / "s.yaml", """\
        default: {instances: 5}
        defaults: {timout: 5}
        services:
          a: {listen: 0, server: /bin/cat}
        """)
    found = {p.key: p for p in problems(path)}
    assert found["default"].line == 1
    assert found["default"].message.startswith("unknown top-level key (did you mean 'defaults'?)")
    assert found["defaults.timout"].line == 2
    assert "did you mean 'timeout'?" in found["defaults.timout"].message


# -- include ---------------------------------------------------------------

def test_include_reads_every_yaml_file_of_the_folder(tmp_path):
    main = write(tmp_path / "services.yaml", """\
        defaults: {instances: 7}
        include: services.d
        services:
          main: {listen: 0, server: /bin/cat}
        """)
    write(tmp_path / "services.d/b.yaml", "services:\n  b: {listen: 0, server: prog}\n")
    write(tmp_path / "services.d/a.yml", "x-common: &c {timeout: 9}\nservices:\n  a: {<<: *c, listen: 0, internal: echo}\n")
    prog = write(tmp_path / "services.d/prog", "#!/bin/sh\n")
    prog.chmod(0o755)
    for ignored in ("c.yaml~", "d.yaml.dpkg-old", ".e.yaml", "README", "notes.txt"):
        write(tmp_path / "services.d" / ignored, "this: [is not read\n")
    (tmp_path / "services.d/sub.yaml").mkdir()                # a folder is not a file
    loaded = config.load(main)
    by_name = {s.name: s for s in loaded.services}
    assert list(by_name) == ["main", "a", "b"]                 # this file, then by file name
    assert all(s.instances == 7 for s in loaded.services)     # this file's defaults
    assert by_name["a"].timeout == 9 and by_name["a"].internal == "echo"
    assert by_name["b"].argv[0] == str(tmp_path / "services.d/prog")   # from its own folder


def test_include_alone_and_a_list_of_folders(tmp_path):
    main = write(tmp_path / "services.yaml", "include: [one, /ABS]\n".replace("/ABS", str(tmp_path / "two")))
    write(tmp_path / "one/x.yaml", "services:\n  x: {listen: 0, server: /bin/cat}\n")
    write(tmp_path / "two/y.yaml", "services:\n  y: {listen: 0, server: /bin/cat}\n")
    assert [s.name for s in config.load(main).services] == ["x", "y"]


@pytest.mark.parametrize("main, included, where, fragment", [
    ("include: d\n", "services:\n  a: {listen: 0, server: /bin/cat, instance: 3}\n",
     ("d/a.yaml", 2, "services.a.instance"), "did you mean 'instances'?"),
    ("include: d\n", "services:\n  a:\n    listen: 0\n    server: [oops\n",
     ("d/a.yaml", 5, None), "YAML syntax"),
    ("include: d\n", "services:\n  a: {listen: 0, server: /no/such/prog}\n",
     ("d/a.yaml", 2, "services.a.server"), "no such program"),
    ("include: d\n", "services: [a, b]\n", ("d/a.yaml", 1, "services"), "expected a mapping"),
    ("include: d\n", "defaults: {instances: 2}\nservices:\n  a: {listen: 0, server: /bin/cat}\n",
     ("d/a.yaml", 1, "defaults"), "belongs in the main file"),
    ("include: d\n", "include: e\nservices:\n  a: {listen: 0, server: /bin/cat}\n",
     ("d/a.yaml", 1, "include"), "belongs in the main file"),
    ("defaults:\n  user: no-such-user-xyz\ninclude: d\n", "services:\n  a: {listen: 0, server: /bin/cat}\n",
     ("services.yaml", 2, "defaults.user"), "no such user"),
    ("include: missing\nservices:\n  m: {listen: 0, server: /bin/cat}\n", None,
     ("services.yaml", 1, "include"), "cannot read folder"),
    ("include: {a: 1}\nservices:\n  m: {listen: 0, server: /bin/cat}\n", None,
     ("services.yaml", 1, "include"), "expected a folder"),
    ("services:\n  a: {listen: 0, server: /bin/cat}\ninclude: d\n", "services:\n\n  a: {listen: 0, server: /bin/cat}\n",
     ("d/a.yaml", 3, "services.a"), "defined twice (first at "),
    ("include: d\n", "services:\n  a: {listen: '127.0.0.1:7999', server: /bin/cat}\n"
                     "  b: {listen: '127.0.0.1:7999', server: /bin/cat}\n",
     ("d/a.yaml", 3, "services.b.listen"), "overlaps"),
])
def test_include_problems_name_the_file_and_line(tmp_path, main, included, where, fragment):
    path = write(tmp_path / "services.yaml", main)
    if included is not None:
        write(tmp_path / "d/a.yaml", included)
    found = problems(path)
    assert len(found) == 1, found
    (p,) = found
    assert (p.file, p.line) == (str(tmp_path / where[0]), where[1]), p
    assert where[2] is None or p.key == where[2], p
    assert fragment in p.message, p


def test_include_of_its_own_folder_does_not_read_itself(tmp_path):
    path = write(tmp_path / "services.yaml", "include: .\nservices:\n  m: {listen: 0, server: /bin/cat}\n")
    write(tmp_path / "more.yaml", "services:\n  n: {listen: 0, server: /bin/cat}\n")
    assert [s.name for s in config.load(path).services] == ["m", "n"]
    write(tmp_path / "services.yaml", "include: ''\nservices:\n  m: {listen: 0, server: /bin/cat}\n")
    (p,) = problems(path)
    assert (p.line, p.key, p.message) == (1, "include", "expected a folder, got ''")


def test_include_with_only_an_empty_folder_is_no_services(tmp_path):
    (tmp_path / "d").mkdir()
    path = write(tmp_path / "services.yaml", "include: d\n")
    (p,) = problems(path)
    assert (p.line, p.key) == (1, "services")


def test_hup_reads_the_included_folder_again(superd, tmp_path):
    folder = tmp_path / "services.d"
    write(folder / "a.yaml", "services:\n  a: {listen: '127.0.0.1:0', internal: echo}\n")
    daemon = superd("include: services.d\n")
    first = daemon.address("a")
    write(folder / "b.yaml", "services:\n  b: {listen: '127.0.0.1:0', internal: echo}\n")
    lines = daemon.reload()
    assert any(line.startswith("reloaded ") for line in lines), lines
    assert daemon.address("a") == first                      # unchanged: the same socket
    with connect(daemon.address("b")) as client:
        client.sendall(b"new\r\n")
        assert client.recv(16) == b"new\r\n"
    # a broken included file: the reload fails, naming it; the running services stay
    write(folder / "c.yaml", "services:\n  c: {listen: '127.0.0.1:0', internal: gopher}\n")
    lines = daemon.reload()
    assert any(line.startswith("reload-failed ") for line in lines), lines
    assert any(f"{folder / 'c.yaml'}:2: services.c.internal" in line for line in lines), lines
    with connect(daemon.address("a")) as client:
        client.sendall(b"old\r\n")
        assert client.recv(16) == b"old\r\n"
    # removing files removes their services
    (folder / "c.yaml").unlink()
    (folder / "b.yaml").unlink()
    daemon.reload()
    assert list(daemon.ready["services"]) == ["a"]
