"""One service's converted settings to a `Service`: the cross-key rules, and
everything resolved once at load so that nothing slow or fallible is left for
each connection (absolute program paths, uids and gids, working directories,
the base environment).

`service()` takes the merged table {key: (value, line, dotted key)} that
superd/config.py built from defaults and the service's own keys, files each
problem with its line and key on the collector it is given, and returns the
Service, or None when it filed a problem.
"""

import grp
import os
import pwd
from pathlib import Path

from superd import values
from superd.handlers_path import internal_argv
from superd.programs import is_python_program
from superd.schema import DEFAULT_INSTANCES, DEFAULT_PATH, NOWAIT_ONLY, Service


def service(name, line, merged, found, folder, environ):
    """Cross-key rules and everything resolved once at load."""
    key = f"services.{name}"
    get = {k: v[0] for k, v in merged.items()}
    where = {k: (v[1], v[2]) for k, v in merged.items()}
    before = len(found.problems)
    if "listen" not in get:
        found.add(line, key, "missing 'listen'")
    protocol = get.get("protocol", "tcp")
    mode = get.get("mode", "wait" if protocol == "udp" else "nowait")
    if protocol == "udp" and mode == "nowait":
        found.add(*where.get("mode", (line, key)), "UDP services are 'wait' (one handler owns the socket)")
    for address in get.get("listen", ()):
        if address.kind == "unix" and protocol == "udp":
            found.add(*where["listen"], "unix: addresses are stream sockets; protocol must be tcp")
        if address.kind == "unix" and get.get("reuse_port"):
            found.add(*where["reuse_port"], "only IP addresses can be shared (SO_REUSEPORT); "
                      f"{address.text} is a unix socket")
    _protection_rules(get, where, mode, protocol, found)
    argv = _argv(name, get, where, line, key, found, folder)
    uid, gid, groups = _credentials(get, where, found)
    workdir = _workdir(get.get("workdir"), where.get("workdir"), found, folder)
    if len(found.problems) > before:
        return None
    listen = tuple(_absolute_unix(a, folder) for a in get["listen"])
    return Service(
        name=name, line=line, listen=listen, protocol=protocol, mode=mode, argv=argv,
        base_env=_base_env(get, environ), uid=uid, gid=gid, groups=groups, workdir=workdir,
        instances=get.get("instances", DEFAULT_INSTANCES), timeout=get.get("timeout", 0.0),
        stderr=get.get("stderr", "inherit"), enabled=get.get("enabled", True),
        internal=get.get("internal", ""),
        only_from=get.get("only_from", ()), no_access=get.get("no_access", ()),
        per_source=get.get("per_source", 0), v6_prefix=get.get("per_source_v6_prefix", 64),
        per_source_rate=get.get("per_source_rate"), rate=get.get("rate"),
        max_load=get.get("max_load"), rlimits=get.get("rlimits", ()),
        proxy_protocol=get.get("proxy_protocol", "none"),
        proxy_from=get.get("proxy_from", ()), proxy_timeout=get.get("proxy_timeout", 10.0),
        preload=get.get("preload", False), reuse_port=get.get("reuse_port", False))


def _protection_rules(get, where, mode, protocol, found):
    if mode == "wait":
        for name in NOWAIT_ONLY:
            if name in get and where[name][1].startswith("services."):
                found.add(*where[name], "applies to nowait services only (in wait mode the "
                          "handler accepts connections itself)")
        return
    proxy = get.get("proxy_protocol", "none")
    for name in ("proxy_from", "proxy_timeout"):
        if name in get and proxy == "none" and where[name][1].startswith("services."):
            found.add(*where[name], "needs proxy_protocol (v1, v2 or any)")


def _argv(name, get, where, line, key, found, folder):
    args = get.get("args", ())
    if ("server" in get) == ("internal" in get):
        found.add(line, key, "needs exactly one of 'server' (a program) or 'internal' (a bundled handler)")
        return ()
    if "internal" in get:
        # bytecode from superd's private cache, unless another user must read it
        private = "user" not in get and "group" not in get
        return internal_argv(get["internal"], bytecode=private, service=name) + args
    program = Path(folder, get["server"])
    if not program.is_file():
        found.add(*where["server"], f"no such program: {program}")
    elif not os.access(program, os.X_OK):
        found.add(*where["server"], f"not executable: {program}")
    elif get.get("preload") and not is_python_program(program):
        found.add(*where["preload"], f"preload needs a Python handler; {program} is not one")
    return (os.path.normpath(program),) + args


def _credentials(get, where, found):
    """(uid, gid, supplementary groups) for the handler; -1 keeps superd's."""
    uid = gid = -1
    groups = ()
    if "user" in get:
        try:
            entry = lookup(pwd.getpwnam, pwd.getpwuid, get["user"])
            uid, gid = entry.pw_uid, entry.pw_gid
            groups = tuple(os.getgrouplist(entry.pw_name, gid))
        except KeyError:
            found.add(*where["user"], f"no such user: {get['user']!r}")
    if "group" in get:
        try:
            gid = lookup(grp.getgrnam, grp.getgrgid, get["group"]).gr_gid
            if uid == -1:
                groups = (gid,)
        except KeyError:
            found.add(*where["group"], f"no such group: {get['group']!r}")
    if os.geteuid() != 0:
        if uid in (-1, os.geteuid()) and gid in (-1, os.getegid()):
            return -1, -1, ()          # already that user: nothing to switch
        line, key = where.get("user") or where["group"]
        found.add(line, key, "switching user or group needs superd to run as root")
    return uid, gid, groups


def lookup(by_name, by_id, text):
    try:
        return by_name(text)
    except KeyError:
        if text.isdigit():
            return by_id(int(text))
        raise


def _workdir(text, where, found, folder):
    path = os.path.normpath(Path(folder, text)) if text else str(folder)
    if not os.path.isdir(path):
        found.add(*where, f"no such directory: {path}")
    return path


def _base_env(get, environ):
    env = {"PATH": environ.get("PATH") or DEFAULT_PATH}
    env.update(get.get("env", ()))
    for name in get.get("passenv", ()):
        if name in environ:
            env[name] = environ[name]
    return tuple(env.items())


def _absolute_unix(address, folder):
    if address.kind != "unix":
        return address
    return values.Address("unix", path=os.path.normpath(Path(folder, address.path)))
