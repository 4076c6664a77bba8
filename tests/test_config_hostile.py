"""Hostile services.yaml: every input is a config error with a line, bounded in
time, memory and output, never a traceback (issue 18)."""

import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from superd import config, yamlfile


def _bomb(levels=7, width=10):
    """Billion laughs: each anchor a list of `width` aliases of the one before."""
    lines = ["x-a: &a [" + ",".join(["1"] * width) + "]"]
    for i in range(levels):
        this, prev = chr(98 + i), chr(97 + i)
        lines.append(f"x-{this}: &{this} [" + ",".join([f"*{prev}"] * width) + "]")
    last = chr(97 + levels)
    lines.append(f"services:\n  s: {{listen: 0, server: /bin/cat, instances: *{last}}}")
    return "\n".join(lines) + "\n"


def _alias_chain(n):
    return "x0: &a0 [1]\n" + "".join(f"x{i}: &a{i} [*a{i - 1}]\n" for i in range(1, n))


SERVICE = "services:\n  a: {listen: 0, server: /bin/cat, %s}\n"

HOSTILE = [
    # (name, text, line, fragment of the message)
    ("alias bomb", _bomb(), 2, "aliases expand past"),
    ("recursive alias", "x-r: &r [*r]\nservices: {a: {listen: 0, server: /bin/cat, args: *r}}\n",
     1, "contains itself"),
    ("alias chain past the stack", _alias_chain(3000), 2, "aliases"),
    ("control character", "services:\n  a: \x12\n", 2, "#x12"),
    ("tagged key", "!!timestamp b: {x: 1}\n", 1, "cannot be read as timestamp"),
    ("deep list", "a: " + "[" * 3000 + "]" * 3000 + "\n", 1, "nests too deeply"),
    ("deep mapping", "a: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", 1, "nests too deeply"),
    ("huge tagged int", "a: !!int " + "9" * 100_000 + "\n", 1, "cannot be read as int"),
    ("huge string", SERVICE % ('instances: "' + "x" * 100_000 + '"'), 2, "instances"),
    ("non-string key", "services:\n  a: {listen: 0, server: /bin/cat, 7: x}\n", 2, ""),
    ("scanner error", "services:\n  a: @x\n", 2, "YAML syntax"),
    ("two documents", "a: 1\n---\nb: 2\n", 2, "YAML syntax"),
] + [(f"{key}: {value}", SERVICE % f"{key}: {value}", 2, key)
     for key in ("instances", "timeout", "rate", "max_load", "per_source")
     for value in (".nan", ".inf", "-.inf", "1e999", "!!float 1e400")]


@pytest.mark.parametrize("name,text,line,fragment", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_check_gives_a_bounded_config_error(tmp_path, name, text, line, fragment):
    path = tmp_path / "services.yaml"
    path.write_text(text)
    done = subprocess.run([sys.executable, "-m", "superd", "--check", "-f", str(path)],
                          capture_output=True, text=True, timeout=20)
    out = done.stdout + done.stderr
    assert done.returncode == 78, out[:2000]
    assert "Traceback" not in out
    assert len(out) < 4096, f"{len(out)} bytes of output"
    assert f"{path}:{line}:" in out, out[:2000]
    assert fragment in out


def test_a_value_quoted_in_a_message_is_cut():
    _, found = yamlfile.load("a: !!int " + "x" * 10_000 + "\n")
    assert len(found) == 1 and len(found[0].message) < 300


def test_shared_anchors_within_the_limit_still_load():
    """Merge keys and aliases used as designed are not mistaken for a bomb."""
    text = ("x-base: &base {listen: 0, server: /bin/cat, args: [a, b]}\n"
            "services:\n" + "".join(f"  s{i}: {{<<: *base, listen: 0}}\n" for i in range(200)))
    value, found = yamlfile.load(text)
    assert found == [] and len(value["services"]) == 200
    assert value["services"]["s7"]["args"] == ["a", "b"]


def _load_or_config_error(tmp_path, data):
    path = tmp_path / "services.yaml"
    path.write_bytes(data)
    try:
        config.load(path)
    except config.ConfigError as err:
        assert all(p.line >= 0 for p in err.problems)


FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

YAML_PIECES = st.sampled_from([
    "services:", "\n", "  ", "a:", " {", "}", "[", "]", ",", "&x ", "*x", "<<: ", "!!int ",
    "!!timestamp ", "!!binary ", "listen: 0", "server: /bin/cat", "instances: ", "1e999",
    ".nan", "-", "? ", "\t", "'", '"', "#", "\x12", "\xff", "%YAML 1.1\n", "---\n", "|\n",
    "9" * 50, "x-", "defaults:", "user: ", "env:", "args: ",
])


@FUZZ
@given(st.binary(max_size=400))
def test_any_bytes_are_a_config_or_a_config_error(tmp_path, data):
    _load_or_config_error(tmp_path, data)


@FUZZ
@given(st.lists(YAML_PIECES, max_size=40))
def test_yaml_shaped_noise_is_a_config_or_a_config_error(tmp_path, pieces):
    _load_or_config_error(tmp_path, "".join(pieces).encode("utf-8", "surrogatepass"))


# -- documents built from superd's own schema, then mutated ---------------------

SCALARS = st.one_of(
    st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.none(), st.sampled_from(["0", "127.0.0.1:0", "[::1]:0", "/bin/cat", "echo", "nowait",
                                "wait", "tcp", "udp", "root", "nobody", "10/1", "1k", "x" * 300,
                                "unix:/tmp/s", "1.2.3.4/33", "\x00", "daytime"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(sorted(config.SERVICE_KEYS)) |
                                                 st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
SERVICE = st.dictionaries(st.sampled_from(sorted(config.SERVICE_KEYS)), VALUES, max_size=8)


@FUZZ
@given(st.dictionaries(st.sampled_from(["a", "b", "x y", "9"]), SERVICE, min_size=1, max_size=3),
       SERVICE, st.integers(0, 3), st.data())
def test_schema_documents_mutated_are_a_config_or_a_config_error(tmp_path, services, defaults,
                                                                   mutation, draw):
    text = yaml.safe_dump({"defaults": defaults, "services": services}, allow_unicode=True)
    if mutation and text:                   # then break it: drop, repeat or splice bytes
        at = draw.draw(st.integers(0, len(text) - 1))
        text = [text[:at] + text[at + 1:], text[:at] + text[at:] * 2,
                text[:at] + draw.draw(st.text(max_size=4)) + text[at:]][mutation - 1]
    _load_or_config_error(tmp_path, text.encode("utf-8", "surrogatepass"))
