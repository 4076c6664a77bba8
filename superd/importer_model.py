"""The records `superd import` builds, and bounded reading of its input.

An `Entry` is one service on its way to services.yaml: the superd keys it
maps to, a remark beside a key whose meaning differs from the source, and
notes (comment lines) for what was not carried over.  A `Report` collects
warnings and errors, each with the file and line it is about; errors past
MAX_ERRORS stop the import.  `read_lines` reads one input file or refuses
it with a Problem: the input may be anything (a binary, a FIFO, a
gigabyte), and nothing in it may cause a traceback or an unbounded read.
"""

import os
import stat
from dataclasses import dataclass, field

from superd.config import Problem

MAX_BYTES = 1 << 20      # a real inetd.conf or xinetd file is a few kB
MAX_LINE = 4096          # characters in one line
MAX_FILES = 1000         # files read in one import, includes counted
MAX_ERRORS = 50
MAX_SERVICES = 2000      # services in one import (each is checked, and checked against the others)
MAX_TOTAL = 16 << 20     # bytes read in one import, includes counted


class ImportFailure(Exception):
    """The input cannot be imported: every problem found, with file and line."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class Report:
    """Warnings and errors of one import, in the order found."""

    def __init__(self):
        self.warnings = []      # Problem objects; key holds the service, if any
        self.errors = []
        self.files = []         # (path, (file, line) of the include naming it, or None)
        self.bytes = 0          # read so far

    def warn(self, file, line, service, message):
        self.warnings.append(Problem(str(file), line, service, message))

    def error(self, file, line, message):
        self.errors.append(Problem(str(file), line, None, message))
        if len(self.errors) >= MAX_ERRORS:
            self.errors.append(Problem(str(file), line, None, "too many errors; stopped reading"))
            raise ImportFailure(self.errors)

    def check(self):
        if self.errors:
            raise ImportFailure(self.errors)


@dataclass
class Entry:
    """One service to write.  Keys are written in the order they were set."""

    name: str                 # wanted name; the writer makes names unique
    file: str                 # where the service was defined
    line: int
    title: str                # what the source called it, for the comment above it
    settings: dict = field(default_factory=dict)   # superd key -> value
    remarks: dict = field(default_factory=dict)    # superd key -> comment beside it
    notes: list = field(default_factory=list)      # comment lines above the keys
    lines: dict = field(default_factory=dict)      # superd key -> the line it came from
    skipped: str = ""         # why the service is written commented out, if it is

    def set(self, key, value, remark="", line=0):
        self.settings[key] = value
        self.lines[key] = line or self.line
        if remark:
            self.remarks[key] = remark

    def unmapped(self, report, line, source, why):
        """`source` (an attribute as written) has no superd equivalent."""
        self.notes.append(f"not imported: {source} ({why})")
        report.warn(self.file, line, self.name, f"not imported: {source} ({why})")

    def skip(self, report, line, why):
        """Leave the whole service out (commented out, with the reason)."""
        if not self.skipped:
            self.skipped = why
            report.warn(self.file, line, self.name, f"service left out: {why}")


def read_lines(path, report, cause=None):
    """[(line number, text)] of path, or None after reporting why it cannot be read.

    cause is (file, line) of the include that names path, where an error about
    opening it belongs; a file named on the command line has none.
    """
    where = cause or (path, 0)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO must not block
    except OSError as err:
        report.error(*where, f"cannot read {path}: {err.strerror}")
        return None
    try:
        data = _read_regular(fd)
    except OSError as err:
        report.error(*where, f"cannot read {path}: {err.strerror}")
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        report.error(path, 1, f"larger than {MAX_BYTES >> 20} MiB: not an inetd.conf or xinetd file")
        return None
    report.bytes += len(data)
    if report.bytes > MAX_TOTAL:
        report.error(*where, f"more than {MAX_TOTAL >> 20} MiB to read in all")
        return None
    return _text_lines(path, data, report)


def _read_regular(fd):
    """At most MAX_BYTES + 1 bytes of fd, which must be a regular file."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(0, "not a regular file")
    chunks, size = [], 0
    while size <= MAX_BYTES:
        chunk = os.read(fd, MAX_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _text_lines(path, data, report):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        report.error(path, data.count(b"\n", 0, err.start) + 1, "not UTF-8 text")
        return None
    lines = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if len(line) > MAX_LINE:
            report.error(path, number, f"line longer than {MAX_LINE} characters")
            return None
        bad = next((c for c in line if c != "\t" and (c < " " or c == "\x7f")), None)
        if bad is not None:
            report.error(path, number, f"control character {bad!r}: not a configuration file")
            return None
        lines.append((number, line))
    return lines
