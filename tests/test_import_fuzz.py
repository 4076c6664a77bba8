"""`superd import` under generated input (issue 18, item 4): inetd.conf lines
and xinetd files built from their grammar and then mutated (field and
attribute names, the operators =, += and -=, braces, include and includedir
to other files, to themselves and to nowhere, `#<off>#` lines, every byte
class, values past the line limit), and raw bytes.

Properties: the import exits 0 or 78 and never raises (in-process, through
importer.main, so a traceback is a failure of the test itself); with exit 0
it wrote a services.yaml that superd's own loader accepts, and with 78 it
wrote nothing.  A few examples go through the real command line too:
`python -m superd import`, then `superd --check` on what it wrote.
"""

import contextlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from superd import config, importer
from superd.importer_map import RLIMITS
from superd.importer_xinetd_map import CORE, SIMPLE, UNMAPPED

# In-process and cheap (two config loads each): half the profile's examples,
# 100 in CI, 10,000 at most (minutes) under HYPOTHESIS_PROFILE=long
# (bench/fuzz.sh); the command-line ones (two interpreters each) far fewer.
EXAMPLES = max(10, min(settings.default.max_examples // 2, 10_000))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLI = settings(FUZZ, max_examples=max(3, min(settings.default.max_examples // 40, 200)))

NOISE = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=4)


def mutated(choices):
    """A usual token, one with a few characters of any class spliced in,
    anything at all, or one far past the line limit."""
    usual = st.sampled_from(choices)
    return st.one_of(usual, st.tuples(usual, NOISE, st.booleans()).map(
                         lambda t: t[1] + t[0] if t[2] else t[0] + t[1]),
                     st.text(max_size=8), usual.map(lambda c: c + "x" * 5000))


def pick(draw, choices, clean):
    """One token: a usual one in a clean file (one bad token refuses a whole
    import, so half the files are clean: their imports get as far as the
    loader), else now and then a mutated one."""
    if clean or draw(st.integers(0, 4)):
        return draw(st.sampled_from(choices))
    return draw(mutated(choices))


# -- inetd.conf ---------------------------------------------------------------

INETD_FIELDS = [
    ["echo", "discard", "daytime", "chargen", "time", "7", "7070", "0", "65535", "65536",
     "127.0.0.1:7071", "[::1]:7072", "*:7073", "::1:7074", "localhost:7075",
     "host.example:7076", "/tmp/superd-fuzz.sock", "rstatd/1-3", "tcpmux/+x",
     "nosuchservice", "echo/", "\u0663"],
    ["stream", "dgram", "raw", "rdm", "seqpacket"],
    ["tcp", "udp", "tcp4", "tcp6", "tcp46", "udp6", "udp46", "unix", "rpc/tcp", "rpc/udp"],
    ["wait", "nowait", "nowait.10", "nowait.0", "wait.999999", "nowait/5/3/2", "nowait/0/0/0",
     "nowait/", "nowait//"],
    ["root", "nobody", "nobody.nogroup", "nobody:nogroup", "root/daemon", "nosuchuser", "0",
     "nobody:", ".root"],
    ["internal", "/bin/cat", "/bin/echo", "/usr/sbin/tcpd", "/no/such/prog", "cat", "/",
     "/bin", "/dev/null"],
]
BAD_FIELDS = [["a:b:c", "[::1", ""], ["STREAM", "packet"], ["sctp", "tcp5", "rpc/"],
              ["nowait.", "wait/1/2/3/4", "nowait.1234567"], [""], ["internal/"]]
WORDS = ["cat", "echo", "in.telnetd", "/bin/cat", "-x", "--", "tcpd", "%s", "'a b'"]
INETD_OTHER = ["", "# a comment", "127.0.0.1:", "*:", "[::1]:", "host:", ":", "#<off>#"]


@st.composite
def inetd_line(draw, clean):
    if not draw(st.integers(0, 3)):
        return draw(st.sampled_from(INETD_OTHER) if clean else mutated(INETD_OTHER))
    fields = [pick(draw, good if clean else good + bad, clean)
              for good, bad in zip(INETD_FIELDS, BAD_FIELDS)]
    fields += [pick(draw, WORDS, clean) for _ in range(draw(st.integers(0, 4)))]
    if not clean and draw(st.integers(0, 4)) == 0:       # too few fields
        fields = fields[:draw(st.integers(0, len(fields)))]
    space = draw(st.sampled_from([" ", "\t", "  ", " \t "]))
    prefix = draw(st.sampled_from(["", "", "", "#<off># ", "#", " ", "#<off>#"]))
    return prefix + space.join(fields)


@st.composite
def inetd_files(draw):
    """A file of lines; a clean one with one service that imports for sure
    among them (an import of services all left out is refused)."""
    clean = draw(st.booleans())
    lines = draw(st.lists(inetd_line(clean), max_size=8))
    if clean:
        lines.insert(draw(st.integers(0, len(lines))), "7299 stream tcp nowait nobody /bin/cat cat")
    return "\n".join(lines) + "\n"


# -- xinetd ---------------------------------------------------------------------

ATTRIBUTE_NAMES = sorted(CORE | set(SIMPLE) | set(UNMAPPED) | set(RLIMITS)
                         | {"enabled", "disabled"})       # defaults' switches
ATTRIBUTE_VALUES = {
    "socket_type": ["stream", "dgram", "raw"], "protocol": ["tcp", "udp", "icmp"],
    "wait": ["yes", "no", "maybe"], "port": ["7080", "7", "0", "99999", "echo"],
    "bind": ["127.0.0.1", "::1", "localhost", "*", "host.example"],
    "interface": ["127.0.0.1"], "type": ["INTERNAL", "UNLISTED", "RPC", "TCPMUX"],
    "flags": ["IPV4", "IPV6", "NAMEINARGS", "REUSE", "NOLIBWRAP", "KEEPALIVE", "SENSOR"],
    "server": ["/bin/cat", "/usr/sbin/tcpd", "/no/such", "cat", "/bin/echo"],
    "server_args": ["-x", "cat", "a b c"], "user": ["root", "nobody", "nosuchuser"],
    "group": ["root", "nogroup", "nosuchgroup"],
    "instances": ["10", "UNLIMITED", "0", "-1", "99999999999"],
    "per_source": ["5", "UNLIMITED", "x"], "cps": ["25 30", "1", "0 0", "10 x"],
    "max_load": ["2.5", "0", "1e9"], "only_from": ["127.0.0.1", "0.0.0.0", "10.1.0.0",
                                                   "192.168.{1,2}", "localhost", "host.ex",
                                                   "::1/128", "10.0.0.0/33"],
    "no_access": ["10.0.0.1", "::/0"], "env": ["A=1", "B", "=x", "LANG=C"],
    "passenv": ["TZ", "PATH"], "disable": ["yes", "no"], "groups": ["yes", "no"],
    "id": ["echo-stream", "x"], "rlimit_as": ["1M", "UNLIMITED", "x"],
    "rlimit_cpu": ["60", "1K"], "rlimit_files": ["1024"],
    "enabled": ["echo", "demo", "x-y", "daytime"], "disabled": ["echo", "time", "demo"],
}
ANY_VALUES = ["", "0", "yes", "x" * 300, "a = b", "{", "}", "#", "\x00", "\udcff", "\u00e9"]
OPERATORS = ["=", "=", "+=", "-="]
ODD_OPERATORS = OPERATORS + ["==", ":", "", "=+", "+"]
NAMES_OF_SERVICES = ["echo", "demo", "daytime", "chargen", "time", "discard", "x-y"]


@st.composite
def attribute(draw, clean):
    name = pick(draw, ATTRIBUTE_NAMES, clean)
    values = ATTRIBUTE_VALUES.get(name, []) + ([] if clean else ANY_VALUES)
    value = " ".join(pick(draw, values or ["x"], clean) for _ in range(draw(st.integers(0, 3))))
    operator = pick(draw, OPERATORS if clean else ODD_OPERATORS, clean)
    return f"\t{name} {operator} {value}"


@st.composite
def block(draw, others, clean):
    """A service or defaults block, an include line, or (not clean) noise."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        word = draw(st.sampled_from(["include", "includedir"]))
        return f"{word} {draw(st.sampled_from(others + ['.', '/nonexistent', 'sub', '']))}"
    if kind == 1 and not clean:
        return draw(st.text(max_size=20))
    head = "defaults" if kind == 2 else "service " + pick(draw, NAMES_OF_SERVICES, clean)
    body = [draw(attribute(clean)) for _ in range(draw(st.integers(0, 8)))]
    if kind < 8:                      # a usual service: enough to be one
        body = ["\tsocket_type = stream", "\twait = no", f"\tport = {7100 + kind}",
                "\tserver = /bin/cat"] + body
    opening = "\n{" if clean else draw(st.sampled_from(["\n{", "\n{", " {", "\n", "\n{\n{"]))
    closing = "\n}" if clean else draw(st.sampled_from(["\n}", "\n}", "", "\n} x", "\n}}"]))
    return head + opening + "\n" + "\n".join(body) + closing


@st.composite
def xinetd_file(draw, others):
    """A file's text; others: names it may include (itself among them)."""
    clean = draw(st.booleans())
    return "\n".join(draw(st.lists(block(others, clean), max_size=5))) + "\n"


# -- running it -----------------------------------------------------------------

def run_import(paths, form="auto"):
    """(exit status, stdout, stderr) of importer.main, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = importer.main([*map(str, paths), "--format", form])
    return status, out.getvalue(), err.getvalue()


def loads(folder, text):
    """Whether superd's loader takes text as a services.yaml (a user superd
    could only switch to as root aside: the one check import leaves)."""
    path = Path(folder) / "imported.yaml"
    path.write_text(text)
    try:
        config.load(path)
    except config.ConfigError as err:
        problems = [p for p in err.problems if importer.ROOT_NEEDED not in p.message]
        assert not problems, "\n".join(map(str, problems)) + "\n" + text
    return True


def imports_cleanly(folder, paths, form="auto"):
    status, out, err = run_import(paths, form)
    assert status in (0, 78), (status, err)
    if status == 0:
        assert loads(folder, out)
    else:
        assert out == "", out
    return status


def write(folder, name, data):
    path = Path(folder) / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogateescape"))
    return path


@FUZZ
@given(inetd_files(), st.sampled_from(["auto", "inetd"]))
def test_inetd_conf_imports_or_is_refused(text, form):
    with tempfile.TemporaryDirectory(prefix="superd-import-fuzz-") as folder:
        imports_cleanly(folder, [write(folder, "inetd.conf", text)], form)


FILES = ["xinetd.conf", "b", "sub/c", "sub/d.dpkg-old"]


@FUZZ
@given(st.tuples(*[xinetd_file(FILES + ["sub"]) for _ in FILES]),
       st.sampled_from(["auto", "xinetd"]), st.booleans())
def test_xinetd_files_import_or_are_refused(texts, form, as_folder):
    """Four files that may include each other, themselves, the folder, or
    nothing there; imported from the first file, or from the folder sub/."""
    with tempfile.TemporaryDirectory(prefix="superd-import-fuzz-") as folder:
        (Path(folder) / "sub").mkdir()
        paths = [write(folder, name, text) for name, text in zip(FILES, texts)]
        imports_cleanly(folder, [Path(folder) / "sub"] if as_folder else paths[:1], form)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(["auto", "inetd", "xinetd"]))
def test_any_bytes_import_or_are_refused(data, form):
    with tempfile.TemporaryDirectory(prefix="superd-import-fuzz-") as folder:
        imports_cleanly(folder, [write(folder, "f", data)], form)


@CLI
@given(st.one_of(inetd_files(), xinetd_file(["f"])))
def test_the_command_line_imports_or_refuses_and_check_accepts(text):
    with tempfile.TemporaryDirectory(prefix="superd-import-fuzz-") as folder:
        path = write(folder, "f", text)
        done = subprocess.run([sys.executable, "-m", "superd", "import", str(path)],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, cwd=folder)
        assert done.returncode in (0, 78) and "Traceback" not in done.stderr, done.stderr
        if done.returncode == 0:
            out = write(folder, "imported.yaml", done.stdout)
            check = subprocess.run([sys.executable, "-m", "superd", "--check", "-f", str(out)],
                                   capture_output=True, text=True, timeout=60,
                                   stdin=subprocess.DEVNULL, cwd=folder)
            assert check.returncode == 0, check.stderr + done.stdout
