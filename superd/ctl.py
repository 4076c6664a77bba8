"""superdctl: see and steer a running superd through its control socket.

    superdctl [-f FILE | --control PATH | --ready-file PATH] [--json] COMMAND [ARGS]

One request per run: connect, send one line of JSON, read one answer (see
control.py).  Tables for people, the daemon's JSON with --json.  Exit 0 on
success, 1 when the daemon refused (with its reason on stderr), 69 when no
daemon answers, 64 on a usage error.  superdctl(8) documents it.
"""

import argparse
import json
import os
import socket
import sys

from superd import control

EX_OK, EX_REFUSED, EX_USAGE, EX_UNAVAILABLE = 0, 1, 64, 69
TIMEOUT = 30.0            # seconds: a reload answers once the new file is loaded and bound
MAX_ANSWER = 64 << 20

COMMANDS = {
    "status": "one row per service",
    "list": "one row per live connection [of SERVICE]",
    "kill": "end the handlers of these connection ids",
    "pause": "stop accepting on SERVICE (clients wait in the backlog)",
    "resume": "accept on SERVICE again",
    "reload": "reload the configuration and print the verdict",
    "config": "print the effective configuration",
    "upgrade": "exec a new superd that inherits every socket",
}


class Unavailable(Exception):
    """No daemon answers (exit 69)."""


def parse(argv):
    p = argparse.ArgumentParser(prog="superdctl", description=__doc__.split("\n\n")[0],
                                epilog="commands: " + "; ".join(f"{k}: {v}" for k, v in COMMANDS.items()))
    where = p.add_mutually_exclusive_group()
    where.add_argument("-f", "--config", metavar="FILE",
                       help="the services file whose `control:` names the socket")
    where.add_argument("--control", metavar="PATH", help="the control socket")
    where.add_argument("--ready-file", metavar="PATH",
                       help="superd's ready file, which names its control socket")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    p.add_argument("args", nargs="*", metavar="ARG")
    return p.parse_args(argv)


def request_of(args):
    """The request object for the command line; ValueError for a usage error."""
    command, rest = args.command, args.args
    if command == "kill":
        # ASCII digits only ('²' is a digit to str.isdigit, not to int), and no more
        # than an id has: past 4300 digits int() itself refuses
        if not rest or not all(a.isascii() and a.isdigit() and len(a) <= 19 for a in rest):
            raise ValueError("kill needs one or more connection ids (numbers)")
        return {"command": "kill", "ids": [int(a) for a in rest]}
    if command in ("pause", "resume"):
        if len(rest) != 1:
            raise ValueError(f"{command} needs one SERVICE")
        return {"command": command, "service": rest[0]}
    if command == "list":
        if len(rest) > 1:
            raise ValueError("list takes at most one SERVICE")
        return {"command": "list", **({"service": rest[0]} if rest else {})}
    if rest:
        raise ValueError(f"{command} takes no arguments")
    return {"command": command}


def socket_path(args, environ=os.environ):
    if args.control:
        return args.control
    if args.ready_file:
        try:
            with open(args.ready_file) as f:
                path = json.load(f).get("control")
        except (OSError, ValueError, AttributeError) as err:
            raise Unavailable(f"{args.ready_file}: {err}") from None
        if not path:
            raise Unavailable(f"{args.ready_file} names no control socket")
        return path
    if args.config:
        from superd import config
        try:
            named = config.load(args.config).control
        except config.ConfigError as err:
            raise Unavailable(f"{args.config}: {err.problems[0]}") from None
        if named == "none":
            raise Unavailable(f"{args.config} turns the control socket off (control: none)")
        if named:
            return named
    if environ.get("SUPERD_CONTROL"):
        return environ["SUPERD_CONTROL"]
    path = control.default_path(environ, os.geteuid(), None)
    if path is None:
        raise Unavailable("no control socket to ask: give --control PATH")
    return path


def ask(path, request, timeout=TIMEOUT):
    """The daemon's answer object; Unavailable if it does not give one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall((json.dumps(request) + "\n").encode())
        chunks, size = [], 0
        while size <= MAX_ANSWER:
            data = sock.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
            size += len(data)
    except OSError as err:
        raise Unavailable(f"{path}: {err.strerror or err}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise Unavailable(f"{path}: the answer is not JSON") from None
    if not isinstance(answer, dict) or "ok" not in answer:
        raise Unavailable(f"{path}: the answer is not a superd answer")
    return answer


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        request = request_of(args)
    except ValueError as err:
        print(f"superdctl: {err}", file=sys.stderr)
        return EX_USAGE
    try:
        answer = ask(socket_path(args), request)
    except Unavailable as err:
        print(f"superdctl: no daemon answers: {err}", file=sys.stderr)
        return EX_UNAVAILABLE
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer.get("ok"):
        from superd import ctl_tables
        ctl_tables.show(args.command, answer, sys.stdout)
    if not answer.get("ok"):
        print(f"superdctl: {answer.get('error', 'refused')}", file=sys.stderr)
        for line in answer.get("errors", []):
            print(line, file=sys.stderr)
        return EX_REFUSED
    return EX_OK
