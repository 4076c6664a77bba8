"""`superd import FILE...`: inetd.conf and xinetd files to a commented services.yaml.

This module owns the command: it reads each FILE (an inetd.conf, an
xinetd.conf with its includes, an /etc/xinetd.d file, or such a folder),
gives every service a unique superd name, writes services.yaml on stdout
and warnings on stderr.  Reading is importer_inetd and importer_xinetd(_map).

Promises:
- superd's own loader (config.load) accepts the text written: a service it
  refuses (a program that is not installed, two services on one address) is
  written commented out with superd's reason, and warned about.  The one
  check left to the machine that runs it is whether superd runs as root
  when a service names a user.
- Every setting not carried over is a comment on its service and a warning
  `FILE:LINE: warning: SERVICE: ...` on stderr.
- Input that is not a configuration file (garbage, a binary, a huge file, an
  unreadable include, an include loop) writes nothing on stdout and every
  problem as `FILE:LINE: ...` on stderr; exit 78.  Never a traceback.
"""

import argparse
import os
import sys
import tempfile

import yaml

from superd import config, importer_inetd, importer_xinetd, importer_xinetd_map, schema
from superd.importer_model import MAX_SERVICES, ImportFailure, Report, read_lines

EX_OK, EX_USAGE, EX_CONFIG = 0, 64, 78
ME = "superd import"
ROOT_NEEDED = "needs superd to run as root"
LIBWRAP = ["xinetd built with libwrap (Debian's is) also read hosts.allow and",
           "hosts.deny; superd does not: carry such rules into only_from and no_access."]


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="superd import",
        description="Write a services.yaml for superd from inetd.conf or xinetd files.")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="an inetd.conf, an xinetd.conf, an xinetd.d file or folder")
    parser.add_argument("--format", choices=("auto", "inetd", "xinetd"), default="auto",
                        help="how to read the files (auto: from the first line that says something)")
    try:
        return parser.parse_args(argv)
    except SystemExit as done:
        raise SystemExit(EX_USAGE if done.code else EX_OK) from None


def main(argv):
    args = parse(argv)
    report = Report()
    try:
        head, entries, xinetd = gather(args.files, args.format, report)
        report.check()
        _unique(entries, report)
        _per_connection_keys(entries, report)
        text = checked(head, entries, _header(report, xinetd), report)
    except ImportFailure as failure:
        _print_warnings(report)
        for problem in failure.problems:
            print(_printable(f"superd import: {problem.message}" if problem.file == ME else problem),
                  file=sys.stderr)
        print(f"superd import: {len(failure.problems)} error(s); nothing written", file=sys.stderr)
        return EX_CONFIG
    _print_warnings(report)
    sys.stdout.write(text)
    return EX_OK


def gather(paths, form, report):
    """(defaults Entry, service Entries, whether any input was xinetd's)."""
    blocks, entries = [], []
    for path in paths:
        if os.path.isdir(path):
            blocks += importer_xinetd.read_folder(path, report)
            continue
        lines = read_lines(path, report)
        if lines is None:
            continue
        if form == "xinetd" or (form == "auto" and importer_xinetd.is_xinetd(lines)):
            blocks += importer_xinetd.read(path, report, lines)
        else:
            report.files.append((path, None))
            entries += importer_inetd.convert(path, lines, report)
    if len(blocks) + len(entries) > MAX_SERVICES:
        raise ImportFailure([config.Problem(ME, 0, None, f"more than {MAX_SERVICES} services: "
                                            "import them in parts")])
    head, services = importer_xinetd_map.convert(blocks, report)
    return head, services + entries, bool(blocks)


def _unique(entries, report):
    """Each entry a name of its own: NAME; NAME-udp for the UDP twin of a TCP
    service (inetd.conf names both `echo`); else NAME-2, NAME-3, ... with a warning."""
    taken = {}                    # name -> (file:line, protocol)
    for entry in entries:
        base = name = entry.name
        protocol = entry.settings.get("protocol", "tcp")
        if name in taken and protocol == "udp" and taken[name][1] != "udp":
            name = f"{base}-udp"
        number = 2
        while name in taken:
            name, number = f"{base}-{number}", number + 1
        if name not in (base, f"{base}-udp"):
            report.warn(entry.file, entry.line, base,
                        f"the name is taken (by {taken[base][0]}); this service is {name}")
        taken[name] = (f"{entry.file}:{entry.line}", protocol)
        entry.name = name


def _per_connection_keys(entries, report):
    """only_from, per_source and the like are checked as superd accepts each
    connection; a wait service's handler accepts for itself, so superd refuses
    them there: each becomes a note, and the service is still written."""
    for entry in entries:
        udp = entry.settings.get("protocol") == "udp"
        if entry.settings.get("mode", "wait" if udp else "nowait") != "wait":
            continue
        for key in schema.NOWAIT_ONLY:
            if key in entry.settings:
                value = entry.settings.pop(key)
                entry.remarks.pop(key, None)
                entry.unmapped(report, entry.lines.get(key, entry.line), f"{key}: {_flow(value)}",
                               "superd applies it to nowait services only; in wait mode "
                               "the handler accepts connections itself")


def checked(head, entries, header, report):
    """The services.yaml text, once superd's loader accepts it."""
    for attempt in range(len(entries) + len(head.settings) + 1):
        text, owners = render(head, entries, header)
        problems = _problems(text)
        for problem in (p for p in problems if ROOT_NEEDED in p.message and not attempt):
            owner = owners.get(problem.line, (None, None))[0]
            report.warn(owner.file, owner.line, owner.name, "superd must run as root to "
                        "switch to this user or group, as xinetd and inetd did")
        problems = [p for p in problems if ROOT_NEEDED not in p.message]
        if not problems:
            return text
        for problem in problems:
            owner, key = owners.get(problem.line, (None, None))
            if owner is None:
                raise ImportFailure([config.Problem(ME, 0, None,
                                                    "no service left to write (see the warnings)")])
            if owner is head:
                head.settings.pop(key, None)
                head.unmapped(report, head.line, f"defaults {key}", problem.message)
            else:
                owner.skip(report, owner.line, f"superd --check says: {problem.message}")
    raise ImportFailure([config.Problem(ME, 0, None, "cannot write a file superd accepts")])


def _problems(text):
    """What config.load finds wrong with text, as the services file of a folder."""
    with tempfile.TemporaryDirectory(prefix="superd-import-") as folder:
        path = os.path.join(folder, "services.yaml")
        with open(path, "w") as out:
            out.write(text)
        try:
            config.load(path)
        except config.ConfigError as err:
            return err.problems
    return []


def render(head, entries, header):
    """(text, {line number: (entry, key)}) for the services.yaml."""
    lines = list(header)
    owners = {}
    if head.settings or head.notes:
        lines += ["", f"# xinetd defaults: {_comment(head.file)}:{head.line}", "defaults:"]
        lines += [f"  # {_comment(n)}" for n in head.notes]
        for key, value in head.settings.items():
            owners[len(lines) + 1] = (head, key)
            lines.append(_setting("  ", key, value, head.remarks.get(key)))
    lines.append("services:")
    for entry in entries:
        lines += ["", f"  # {_comment(f'{entry.title}: {entry.file}:{entry.line}')}"]
        lines += [f"  # {_comment(n)}" for n in entry.notes]
        body = [f"  {_flow(entry.name)}:"] + [_setting("    ", k, v, entry.remarks.get(k))
                                      for k, v in entry.settings.items()]
        if entry.skipped:
            lines.append(f"  # left out: {_comment(entry.skipped)}")
            lines += ["  # " + line[2:] for line in body]
            continue
        for line in body:
            owners[len(lines) + 1] = (entry, None)
            lines.append(line)
    return "\n".join(lines) + "\n", owners


def _setting(indent, key, value, remark):
    text = f"{indent}{key}: {_flow(value)}"
    return f"{text}    # {_comment(remark)}" if remark else text


def _flow(value):
    """value as one line of YAML, quoted wherever YAML would misread it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20,
                          allow_unicode=False, sort_keys=False)
    return text[:-5] if text.endswith("\n...\n") else text.rstrip("\n")


def _comment(text, limit=200):
    """text fit for one comment line: printable, bounded."""
    text = _printable(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _printable(text):
    """text with what a terminal or a YAML comment would act on escaped (a file
    name may hold a newline or an escape sequence)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _header(report, xinetd):
    lines = ["# services.yaml for superd(8), written by `superd import` from:"]
    for path, cause in report.files:
        lines.append("#   " + _comment(path + (f" (included from {cause[0]}:{cause[1]})" if cause else "")))
    lines += ["# Above each service: the file and line it came from, and what was not",
              "# imported.  A service superd cannot run is here commented out, with the",
              "# reason.  Check the file with: superd --check -f FILE"]
    if xinetd:
        lines += [f"# {text}" for text in LIBWRAP]
    return lines


def _print_warnings(report):
    for w in report.warnings:
        about = f"{w.key}: " if w.key else ""
        print(_printable(f"{w.file}:{w.line}: warning: {about}{w.message}"), file=sys.stderr)

