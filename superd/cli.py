"""The command line: parse options, prepare the process, run the supervisor.

This is the only module that exits the process.  Exit codes follow
sysexits(3): 0 success, 64 usage, 78 configuration, 71 OS error (a socket
that cannot be bound, say).
"""

import argparse
import math
import os
import sys

from superd import __version__
from superd import config as configuration
from superd.logs import LEVELS, TIMES, Logger, default_times, syslog_socket
from superd.sysutil import errname

EX_OK, EX_USAGE, EX_OSERR, EX_CONFIG = 0, 64, 71, 78


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: {message}\n")


def parse(argv):
    parser = _Parser(prog="superd", description="An inetd-style super-server.",
                     epilog="superd import FILE... writes a services.yaml from inetd.conf or "
                            "xinetd files (superd import --help; superd(8), IMPORTING).")
    parser.add_argument("-f", "--config", metavar="FILE",
                        help="services file (default: $SUPERD_CONFIG, ./etc/services.yaml, "
                             "/etc/superd/services.yaml, then the packaged default)")
    parser.add_argument("--check", action="store_true",
                        help="validate the file, print every error, exit 0 or 78")
    parser.add_argument("--ready-file", metavar="PATH",
                        help="write the bound addresses as JSON here when ready and after each reload")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="one line per event: `event key=value ...` (text) or a JSON "
                             "object (json); default text")
    parser.add_argument("--log-level", choices=tuple(LEVELS), default="info",
                        help="the least severe events logged: debug adds a line per handler "
                             "start; default info")
    parser.add_argument("--log-time", choices=TIMES, default=None,
                        help="text lines begin with an RFC 3339 time in UTC or local time "
                             "with its offset, or none (default: utc; none when stderr is "
                             "journald's, which stamps lines itself)")
    parser.add_argument("--log", choices=("stderr", "syslog"), default="stderr",
                        help="where lines go: standard error, or the local syslog socket "
                             "/dev/log (journald or a syslog daemon; facility daemon)")
    parser.add_argument("--grace", type=_seconds, default=10.0, metavar="SECONDS",
                        help="on TERM, how long handlers may finish before they are killed (10)")
    parser.add_argument("--print-example", action="store_true",
                        help="print the packaged example services.yaml and exit")
    parser.add_argument("--version", action="version", version=f"superd {__version__}")
    return parser.parse_args(argv)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number of seconds: {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["import"]:
        from superd import importer
        sys.exit(importer.main(argv[1:]))
    args = parse(argv)
    if args.print_example:
        sys.stdout.write(configuration.example_text())
        sys.exit(EX_OK)
    path = args.config or configuration.default_path()
    if args.check:
        sys.exit(check(path))
    sys.exit(serve(path, args))


def check(path):
    try:
        config = configuration.load(path)
    except configuration.ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        print(f"{err.problems[0].file}: {len(err.problems)} error(s)", file=sys.stderr)
        return EX_CONFIG
    print(f"{config.path}: ok, {len(config.enabled)} service(s) enabled")
    return EX_OK


def serve(path, args):
    from superd import spawn, tuning
    from superd.supervisor import ReadyFileError, Supervisor

    _prepare_fds()
    log = _logger(args)
    try:
        thresholds = tuning.from_text(os.environ.get("SUPERD_THRESHOLDS"))
    except ValueError as err:
        log.error("config-error", problem=f"SUPERD_THRESHOLDS: {err}")
        return EX_CONFIG
    supervisor = Supervisor(path, log, ready_file=args.ready_file, grace=args.grace,
                            thresholds=thresholds)
    try:
        supervisor.start()
    except configuration.ConfigError as err:
        for problem in err.problems:
            log.error("config-error", problem=str(problem))
        return EX_CONFIG
    except spawn.SpawnSetupError as err:
        log.error("config-error", problem=str(err))
        return EX_CONFIG
    except ReadyFileError as err:
        log.error("ready-file-failed", path=err.path, error=err.name)
        return EX_OSERR
    except OSError as err:
        log.error("cannot-listen", address=getattr(err, "address", ""), error=errname(err))
        return EX_OSERR
    return supervisor.run()


def _logger(args):
    """The Logger the options ask for; without a syslog socket, stderr (said there)."""
    times = args.log_time or default_times(os.environ)
    if args.log == "syslog":
        path = os.environ.get("SUPERD_SYSLOG_SOCKET", "/dev/log")   # tests name theirs
        try:
            return Logger(args.log_format, args.log_level, syslog=syslog_socket(path))
        except OSError as err:
            log = Logger(args.log_format, args.log_level, times=times)
            log.error("syslog-unavailable", path=path, error=errname(err),
                      fallback="stderr")
            return log
    return Logger(args.log_format, args.log_level, times=times)


def _prepare_fds():
    """fds 0-2 open (so no socket lands there); every other inherited fd close-on-exec."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)    # takes the lowest free number: fd
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass                           # the listdir fd itself, now closed
