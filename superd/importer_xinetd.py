"""Reading xinetd.conf and /etc/xinetd.d files for `superd import`.

`read(path, report)` returns the `defaults` and `service` blocks of path and
of every file it includes (`include FILE`, `includedir DIR`), in the order
xinetd reads them: as written, a folder's files sorted by name, skipping
those whose name holds a '.' or ends in '~' (xinetd's rule, which keeps
editor backups and dpkg leftovers out).  Relative include paths resolve
against the including file's folder.  An include loop, a chain deeper than
MAX_DEPTH, a line that is neither a block, an attribute nor an include, and
a block left open are errors naming file and line; a file included a second
time is read once, with a warning.  Mapping blocks to services is
importer_xinetd_map.
"""

import os
import re
from dataclasses import dataclass, field

from superd.importer_model import MAX_FILES, read_lines

MAX_DEPTH = 16

ATTRIBUTE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(\+=|-=|=)\s*(.*)")


@dataclass
class Attribute:
    name: str
    op: str                   # "=", "+=" or "-="
    values: list              # the value split on whitespace, as xinetd splits it
    line: int
    text: str                 # the line, spaced evenly, for comments


@dataclass
class Block:
    kind: str                 # "service" | "defaults"
    name: str                 # the service name; "" for defaults
    file: str
    line: int
    attributes: list = field(default_factory=list)


def read(path, report, lines=None):
    """Every block of path and its includes; problems go to report.
    lines: path's, if read already."""
    reader = _Reader(report)
    reader.file(str(path), None, (), lines)
    return reader.blocks


def read_folder(path, report):
    """Every block of the files in folder path (as `includedir path` reads it)."""
    reader = _Reader(report)
    reader.folder(str(path), (str(path), 0), ())
    return reader.blocks


def is_xinetd(lines):
    """Whether the first line that says something is xinetd syntax."""
    for _, text in lines:
        text = text.strip()
        if text and not text.startswith("#"):
            word = text.split()[0]
            return word in ("service", "defaults", "include", "includedir", "{")
    return False


class _Reader:
    def __init__(self, report):
        self.report = report
        self.blocks = []
        self.seen = {}            # realpath -> where it was first read from

    def file(self, path, cause, stack, lines=None):
        real = os.path.realpath(path)
        where = cause or (path, 0)
        if real in stack:
            chain = " -> ".join(os.path.basename(p) for p in stack + (real,))
            self.report.error(*where, f"include loop: {chain}")
            return
        if len(stack) >= MAX_DEPTH:
            self.report.error(*where, f"includes nest deeper than {MAX_DEPTH} files")
            return
        if real in self.seen:
            self.report.warn(*where, None, f"{path} was read already ({self.seen[real]}); not read again")
            return
        if len(self.seen) >= MAX_FILES:
            self.report.error(*where, f"more than {MAX_FILES} files to read")
            return
        self.seen[real] = f"included from {cause[0]}:{cause[1]}" if cause else "named on the command line"
        if lines is None:
            lines = read_lines(path, self.report, cause)
        self.report.files.append((path, cause))
        if lines is not None:
            self._parse(path, lines, stack + (real,))

    def folder(self, path, cause, stack):
        try:
            names = sorted(os.listdir(path))
        except OSError as err:
            self.report.error(*cause, f"cannot read folder {path}: {err.strerror}")
            return
        for name in names:
            full = os.path.join(path, name)
            if "." in name or name.endswith("~") or os.path.isdir(full):
                continue
            self.file(full, cause, stack)

    def _parse(self, path, lines, stack):
        block = opening = None        # the block being read; one whose '{' is due
        for number, raw in lines:
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            if opening is not None:
                if text == "{":
                    block, opening = opening, None
                    continue
                self.report.error(path, number, f"expected '{{' on the line after "
                                  f"{_title(opening)} (line {opening.line})")
                opening = None
            if block is not None:
                if text == "}":
                    self.blocks.append(block)
                    block = None
                    continue
                if text.split()[0] not in ("service", "defaults", "include", "includedir"):
                    self._attribute(block, path, number, text)
                    continue
                self.report.error(path, block.line, f"{_title(block)} is not closed "
                                  f"(no '}}' before line {number})")
                block = None
            opening = self._top(path, number, text, stack)
        for left in (block, opening):
            if left is not None:
                self.report.error(path, left.line, f"{_title(left)} is not closed "
                                  "(no '}' before the end of the file)")

    def _top(self, path, number, text, stack):
        """A top-level line; returns the block it opens, if it opens one."""
        parts = text.split(None, 1)
        word, rest = parts[0], parts[1].strip() if len(parts) > 1 else ""
        if word == "service" and rest and len(rest.split()) == 1:
            return Block("service", rest, path, number)
        if word == "defaults" and not rest:
            return Block("defaults", "", path, number)
        if word in ("include", "includedir") and rest:
            target = os.path.join(os.path.dirname(path), rest)
            (self.file if word == "include" else self.folder)(target, (path, number), stack)
            return None
        self.report.error(path, number, "expected 'service NAME', 'defaults', 'include FILE' or "
                          f"'includedir FOLDER', got {_shown(text)}")
        return None

    def _attribute(self, block, path, number, text):
        m = ATTRIBUTE.fullmatch(text)
        if not m:
            self.report.error(path, number, f"expected ATTRIBUTE = VALUE or '}}', got {_shown(text)}")
            return
        name, op, values = m.group(1), m.group(2), m.group(3).split()
        block.attributes.append(Attribute(name, op, values, number, " ".join([name, op] + values)))


def _title(block):
    return f"service {block.name}" if block.kind == "service" else "defaults"


def _shown(text):
    return repr(text if len(text) <= 60 else text[:57] + "...")
