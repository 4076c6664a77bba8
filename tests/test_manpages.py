"""The manual pages: every page renders cleanly, and the two daemon pages
have an entry for every option and every services.yaml key the code accepts.

Rendering uses groff (Debian: groff-base, which man-db depends on) exactly as
the pages are checked by hand: `groff -man -Tutf8 -ww -z`.  A page that
sources another (`.so man8/superd-classic.8`) is rendered from a temporary
man hierarchy, as man(1) does, so the stubs are checked too.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from superd.config import SERVICE_KEYS

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = sorted(p for p in MAN.iterdir() if re.fullmatch(r".+\.[1-9]", p.name))


def groff():
    path = shutil.which("groff")
    assert path, "groff is not installed (Debian: apt-get install groff-base); the man pages cannot be checked"
    return path


@pytest.fixture(scope="module")
def hierarchy(tmp_path_factory):
    """man/ laid out as man1/ ... man8/, so `.so manN/page.N` resolves."""
    root = tmp_path_factory.mktemp("manroot")
    for page in PAGES:
        section = root / f"man{page.suffix[1:]}"
        section.mkdir(exist_ok=True)
        shutil.copy(page, section / page.name)
    return root


def test_there_are_pages():
    names = {p.name for p in PAGES}
    assert {"superd.8", "services.yaml.5"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_renders_without_warnings(page, hierarchy):
    relative = f"man{page.suffix[1:]}/{page.name}"
    result = subprocess.run([groff(), "-man", "-Tutf8", "-ww", "-z", relative],
                            cwd=hierarchy, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", f"{page.name}: groff warnings:\n{result.stderr}"


def plain_source(page):
    """The page's roff source with escapes that hide words taken out."""
    text = (MAN / page).read_text()
    text = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", text)      # font changes
    text = text.replace("\\-", "-").replace("\\(hy", "-").replace("\\&", "").replace("\\%", "")
    return text


def tags(text):
    """The words of every .TP tag line: the terms a page defines."""
    words = set()
    lines = text.splitlines()
    for before, line in zip(lines, lines[1:]):
        if before.strip() == ".TP":
            line = re.sub(r"^\.[A-Z]+\s*", "", line).replace('"', " ")
            words.update(w.strip(",.;()[]") for w in line.split())
    return words


def help_options():
    result = subprocess.run([sys.executable, "-m", "superd", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout))
    assert {"--check", "--config", "-f"} <= options, result.stdout
    return sorted(options)


def test_superd_8_defines_every_option():
    defined = tags(plain_source("superd.8"))
    missing = [option for option in help_options() if option not in defined]
    assert missing == [], f"superd.8 has no entry for {missing}"


def test_services_yaml_5_defines_every_key():
    defined = tags(plain_source("services.yaml.5"))
    missing = [key for key in SERVICE_KEYS if key not in defined]
    assert missing == [], f"services.yaml.5 has no entry for {missing}"
