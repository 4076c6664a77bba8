"""superd as a user installs it, and the files it writes.

The wheel is built once per session from a copy of the checkout (so no
build/ or stale file of the checkout goes in), then pip-installs into a new
venv for the oldest and the newest Python superd supports, found among
pyenv's interpreters; a missing one fails the test, naming it.  In each
venv: the console script and `python -m superd`, `--print-example` passing
`--check`, `superd import`, the man pages where man(1) finds them, the
examples of etc/ in share/doc/superd/examples, and the license metadata.  The bytecode cache is tested with real processes and
environments: no missing home is ever created, systemd's $CACHE_DIRECTORY
is used.
"""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.9", "3.13")
TIMEOUT = 120
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                    ".pytest_cache", "bench")


def find_python(version):
    """This machine's python<version>: pyenv's (the newest patch release), else
    one on PATH that is not a pyenv shim (which runs only the selected versions)."""
    pyenv = os.path.expanduser("~/.pyenv/versions")
    found = sorted(glob.glob(f"{pyenv}/{version}.*/bin/python{version}"), reverse=True)
    found += [p for p in [shutil.which(f"python{version}")] if p and "/shims/" not in p]
    if not found:
        pytest.fail(f"Python {version} is not installed (not on PATH, not in {pyenv}); "
                    f"the wheel cannot be tested on it", pytrace=False)
    return found[0]


def run(argv, **kw):
    kw.setdefault("timeout", TIMEOUT)
    result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kw)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    source = tmp_path_factory.mktemp("source") / "superd"
    shutil.copytree(ROOT, source, ignore=NOT_COPIED)
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
         "-w", str(out), str(source)])
    (path,) = out.glob("superd-*.whl")
    return path


@pytest.mark.parametrize("version", PYTHONS)
def test_wheel_installs_and_runs(wheel, tmp_path, version):
    venv = tmp_path / f"venv{version}"
    run([find_python(version), "-m", "venv", str(venv)])
    run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(wheel)])
    bin_ = venv / "bin"
    here = {"cwd": tmp_path, "env": {"PATH": f"{bin_}:/usr/bin:/bin", "HOME": str(tmp_path)}}
    assert run([str(bin_ / "superd"), "--version"], **here).strip() == "superd 0.1.0"
    assert run([str(bin_ / "python"), "-m", "superd", "--version"], **here).strip() == "superd 0.1.0"
    # the packaged example, printed, is a file superd accepts; its handlers are installed
    example = run([str(bin_ / "superd"), "--print-example"], **here)
    (tmp_path / "example.yaml").write_text(example)
    assert "internal: echo" in example
    assert ": ok, " in run([str(bin_ / "superd"), "--check", "-f", "example.yaml"], **here)
    (tmp_path / "inetd.conf").write_text("echo stream tcp nowait root internal\n")
    assert "internal: echo" in run([str(bin_ / "superd"), "import", "inetd.conf"], **here)
    # the man pages, where man(1) looks for them in this prefix
    for page in ("man8/superd.8", "man5/services.yaml.5", "man8/superd-httpd.8", "man8/superd-echo.8"):
        assert (venv / "share/man" / page).is_file(), page
    # etc/'s examples, runnable where they land
    examples = venv / "share/doc/superd/examples"
    assert ": ok, " in run([str(bin_ / "superd"), "--check", "-f", str(examples / "services.yaml")],
                           **here)
    assert os.access(examples / "www/cgi-bin/form.py", os.X_OK)
    # the handler authors' examples, with their own services file
    assert ": ok, " in run([str(bin_ / "superd"), "--check", "-f",
                            str(examples / "handlers/services.yaml")], **here)
    assert os.access(examples / "handlers/chat.py", os.X_OK)
    for name in ("inetd.conf", "xinetd.d/superd-httpd", "systemd/superd-httpd.socket", "www/index.html",
                 "haproxy/haproxy.cfg"):
        assert (examples / name).is_file(), name
    man = shutil.which("man")
    assert man, "man (Debian: man-db) is not installed; .ci/run installs it"
    found = run([man, "-w", "superd"], env={**here["env"], "MANPATH": str(venv / "share/man")}).strip()
    assert found == str(venv / "share/man/man8/superd.8")
    license = run([str(bin_ / "python"), "-c", "import importlib.metadata as m; "
                   "d = m.distribution('superd'); print(d.metadata['License-Expression']); "
                   "print(any(str(f).endswith('LICENSE') for f in d.files))"], **here)
    assert license.split() == ["MIT", "True"]


def test_license_file_and_spdx_expression():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) 2026 the superd authors\n")
    text = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in text and 'license-files = ["LICENSE"]' in text


def test_print_example_is_the_packaged_default(tmp_path):
    printed = run([sys.executable, "-m", "superd", "--print-example"], cwd=tmp_path)
    assert printed == (ROOT / "superd/default.yaml").read_text()


# -- the bytecode cache --------------------------------------------------------

ECHO = "services:\n  echo: {listen: '127.0.0.1:0', internal: echo}\n"


def check_with(tmp_path, **env):
    """superd --check of a file with an internal handler (compiled at load), in env."""
    (tmp_path / "s.yaml").write_text(ECHO)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    run([sys.executable, "-m", "superd", "--check", "-f", "s.yaml"], cwd=tmp_path, env={**base, **env})


def compiled_in(folder):
    return sorted(p.name for p in Path(folder).glob("*.pyc"))


def test_cache_never_creates_a_missing_home(tmp_path):
    home = tmp_path / "nonexistent"
    check_with(tmp_path, HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    assert not home.exists()
    assert compiled_in(tmp_path / f"tmp/superd-{os.geteuid()}")       # it went to $TMPDIR instead


def test_cache_under_an_existing_home_and_xdg(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    check_with(tmp_path, HOME=str(home))
    assert compiled_in(home / ".cache/superd")
    assert (home / ".cache/superd").stat().st_mode & 0o777 == 0o700
    xdg = tmp_path / "xdg"                        # made, as the XDG spec asks: its parent exists
    check_with(tmp_path, HOME=str(home), XDG_CACHE_HOME=str(xdg))
    assert compiled_in(xdg / "superd")
    assert xdg.stat().st_mode & 0o777 == 0o700


def test_cache_under_systemd_is_cache_directory(tmp_path):
    cache = tmp_path / "var-cache-superd"
    cache.mkdir(mode=0o755)                       # as systemd makes CacheDirectory=
    check_with(tmp_path, CACHE_DIRECTORY=f"{cache}:{tmp_path / 'second'}", HOME=str(tmp_path / "none"))
    assert compiled_in(cache)
    assert not (tmp_path / "none").exists() and not (tmp_path / "second").exists()


def test_cache_refuses_a_folder_others_may_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    check_with(tmp_path, CACHE_DIRECTORY=str(shared), HOME=str(tmp_path / "none"))
    assert compiled_in(shared) == []
    assert compiled_in(tmp_path / f"tmp/superd-{os.geteuid()}")
