"""services.yaml to validated, immutable configuration.

This is the only module that reads YAML.  `load(path)` returns a `Config`
whose services are frozen `Service` objects with everything resolved that
could be slow or fail per connection: absolute program paths, uids and gids,
working directories, the base environment.  Every problem in the file is
collected with its file, line and key, and raised together as one
`ConfigError`, so `superd --check` can print them all at once.

The per-service keys are rows of `SERVICE_KEYS`; a key that is not a row is
an error, never ignored.
"""

import difflib
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from superd import values, yamlfile
from superd.handlers_path import INTERNAL, internal_argv
from superd.programs import is_python_program

DEFAULT_INSTANCES = 200
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    key: str
    message: str

    def __str__(self):
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one file."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Service:
    name: str
    line: int                 # where the service starts in the file, for messages
    listen: tuple             # of values.Address
    protocol: str             # "tcp" | "udp"
    mode: str                 # "nowait" | "wait"
    argv: tuple               # program (absolute) first, then its arguments
    base_env: tuple           # (NAME, value) pairs: PATH, env, passenv, resolved at load
    uid: int                  # -1: superd's own
    gid: int                  # -1: superd's own
    groups: tuple             # supplementary groups when uid is set
    workdir: str              # absolute
    instances: int            # most handlers alive at once
    timeout: float            # seconds a handler may live; 0: forever
    stderr: str               # "inherit" | "log" | "null"
    enabled: bool
    internal: str             # bundled handler name, or ""
    # protection (nowait services; see limits.py): empty or None means off
    only_from: tuple = ()     # ip_network objects; a client must be in one
    no_access: tuple = ()     # ip_network objects, checked after only_from
    per_source: int = 0       # most handlers alive at once per client; 0: no limit
    v6_prefix: int = 64       # IPv6 clients are grouped by this prefix for per_source*
    per_source_rate: dict = None   # {limit, per}
    rate: dict = None         # {limit, per, pause}
    max_load: float = None    # stop accepting above this 1-minute load average
    rlimits: tuple = ()       # ((name, value), ...) set before the handler runs
    proxy_protocol: str = "none"   # none | v1 | v2 | any
    proxy_from: tuple = ()    # who may send a PROXY header (ip_network objects)
    proxy_timeout: float = 10.0
    preload: bool = False     # Python handlers: fork a warm interpreter instead of exec
    reuse_port: bool = False  # SO_REUSEPORT: several superds may listen on the address


@dataclass(frozen=True)
class Config:
    path: str
    services: tuple           # enabled and disabled Service objects, in file order
    control: str = ""         # the control socket's path, "none", or "" for the default
    control_gid: int = None   # control_group: the socket is 0660 for it

    @property
    def enabled(self):
        return tuple(s for s in self.services if s.enabled)


# key: converter.  Converters are pure and raise ValueError quoting the value.
SERVICE_KEYS = {
    "listen": values.address_list,
    "protocol": values.choice("tcp", "udp"),
    "mode": values.choice("nowait", "wait"),
    "server": values.string,
    "internal": values.choice(*INTERNAL),
    "args": values.string_list,
    "env": values.env_mapping,
    "passenv": values.env_names,
    "user": values.name_or_id,
    "group": values.name_or_id,
    "workdir": values.string,
    "instances": values.positive_int,
    "timeout": values.seconds_or_zero,
    "stderr": values.stderr_target,
    "enabled": values.boolean,
    "only_from": values.network_list,
    "no_access": values.network_list,
    "per_source": values.positive_int,
    "per_source_v6_prefix": values.v6_prefix,
    "per_source_rate": values.window("limit", "per"),
    "rate": values.window("limit", "per", "pause"),
    "max_load": values.number,
    "rlimits": values.rlimits,
    "proxy_protocol": values.choice("none", "v1", "v2", "any"),
    "proxy_from": values.network_list,
    "proxy_timeout": values.duration,
    "preload": values.boolean,
    "reuse_port": values.boolean,
}
# Keys that only make sense where superd sees each connection.
NOWAIT_ONLY = ("only_from", "no_access", "per_source", "per_source_v6_prefix",
               "per_source_rate", "proxy_protocol", "proxy_from", "proxy_timeout")
NOT_IN_DEFAULTS = {"listen", "server", "internal"}
TOP_KEYS = ("defaults", "services", "include", "control", "control_group")
# What xinetd and inetd.conf call a key, for the message about an unknown key.
FOREIGN_KEYS = {
    "server_args": "args", "socket_type": "protocol", "port": "listen", "bind": "listen",
    "interface": "listen", "wait": "mode", "disable": "enabled", "cps": "rate",
    "rlimit_as": "rlimits", "rlimit_cpu": "rlimits", "rlimit_files": "rlimits",
    "rlimit_data": "rlimits", "rlimit_stack": "rlimits", "id": "a service's name",
}
INCLUDED_SUFFIXES = (".yaml", ".yml")


class _Collector:
    """Problems found so far in one file.  An included file's collector shares
    the main file's list, and files a problem about a `defaults.` key under the
    main file, where defaults are written."""

    def __init__(self, path, problems=None, main=None):
        self.path = str(path)
        self.main = str(main or path)
        self.problems = [] if problems is None else problems

    def add(self, line, key, message):
        path = self.main if str(key or "").startswith("defaults.") else self.path
        self.problems.append(Problem(path, line, key, yamlfile.bounded(message)))


def unknown(key, known):
    """'unknown key', and the key meant, if a near or a foreign one names it."""
    text = str(key)
    if text in FOREIGN_KEYS and text not in known:
        return (f"unknown key (xinetd's {text} is {FOREIGN_KEYS[text]} here; "
                "superd import converts xinetd and inetd.conf files)")
    close = difflib.get_close_matches(text, list(known), n=1, cutoff=0.6)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def load(path, environ=None):
    """Read and validate path; return a Config or raise ConfigError."""
    path = Path(path).absolute()
    found = _Collector(path)
    tree = _read(path, found)
    if found.problems:
        raise ConfigError(found.problems)
    services, origins = _top_level(tree, found, path.parent, os.environ if environ is None else environ)
    _check_addresses(services, origins)
    control, control_gid = _control(tree, found, path.parent)
    if found.problems:
        # an error in defaults is found once per service that inherits it
        raise ConfigError(dict.fromkeys(found.problems))
    return Config(str(path), tuple(services), control, control_gid)


def _control(tree, found, folder):
    """control: PATH | none (a relative path is the file's folder's) and control_group."""
    if not isinstance(tree, yamlfile.Located):
        return "", None
    path, gid = "", None
    if "control" in tree:
        value = tree["control"]
        if not isinstance(value, str) or not value or "\0" in value:
            found.add(tree.lines["control"], "control", "expected a path, or none")
        elif value != "none":
            path = str(folder / value) if not value.startswith("/") else value
            if len(path.encode()) > 107:
                found.add(tree.lines["control"], "control",
                          f"a UNIX socket path is at most 107 bytes; {len(path.encode())} here")
        else:
            path = "none"
    if "control_group" in tree:
        value = tree["control_group"]
        try:
            gid = _lookup(grp.getgrnam, grp.getgrgid, values.name_or_id(value)).gr_gid
        except (KeyError, ValueError, TypeError, OverflowError):
            found.add(tree.lines["control_group"], "control_group", f"no group {value!r}")
    return path, gid


def _read(path, found):
    """The YAML tree of path; what is wrong with it goes to found."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        found.add(0, None, f"cannot read: {getattr(err, 'strerror', None) or err}")
        return None
    tree, yaml_problems = yamlfile.load(text)
    for p in yaml_problems:
        found.add(p.line, p.key, p.message)
    return tree


def _is_extension(key):
    """x-NAME at the top level is the user's, ignored: a place for YAML anchors
    that services merge in (`<<: *name`), as in compose files."""
    return isinstance(key, str) and key.startswith("x-")


def _top_level(tree, found, folder, environ):
    """(services, {name: the collector of its file}) of the main file and its includes."""
    if found.problems:
        return [], {}
    if not isinstance(tree, yamlfile.Located):
        found.add(1, None, "expected a mapping with a 'services' key")
        return [], {}
    for key in tree:
        if key not in TOP_KEYS and not _is_extension(key):
            found.add(tree.lines[key], key, unknown(key, TOP_KEYS).replace("key", "top-level key", 1)
                      + "; expected defaults, services, include, control, control_group, or x-NAME")
    defaults = tree.get("defaults") or yamlfile.Located(tree.line)
    if not isinstance(defaults, yamlfile.Located):
        found.add(tree.lines["defaults"], "defaults", "expected a mapping of service settings")
        defaults = yamlfile.Located(tree.line)
    for key in defaults:
        if key in NOT_IN_DEFAULTS:
            found.add(defaults.lines[key], f"defaults.{key}", "not allowed in defaults")
    before = len(found.problems)
    tables = _included(tree, found, folder)
    if "services" not in tree and not tables and len(found.problems) > before:
        return [], {}             # what the include folders hold is wrong: said already
    table = tree.get("services")
    if "services" in tree or not tables:
        if not isinstance(table, yamlfile.Located) or not (table or tables):
            found.add(tree.lines.get("services", tree.line), "services",
                      "expected a mapping of service name to settings")
            return [], {}
        tables.insert(0, (table, found, folder))
    return _services(tables, defaults, environ)


def _services(tables, defaults, environ):
    """Every service of every (table, collector, folder); a name given twice is an error."""
    services, origins, first = [], {}, {}
    for table, found, folder in tables:
        for name, settings in table.items():
            line = table.lines[name]
            if not values.is_service_name(name):
                why = ("a service name is letters, digits, '.', '_' and '-' (it becomes "
                       "SUPERD_SERVICE and LISTEN_FDNAMES)")
                if not isinstance(name, str):
                    why = f"YAML reads this name as {name!r}, not text: quote it"
                found.add(line, f"services.{name}", why)
                continue
            if name in first:
                found.add(line, f"services.{name}", f"service {name!r} is defined twice "
                          f"(first at {first[name]})")
                continue
            first[name] = f"{found.path}:{line}"
            service = _service(str(name), line, settings, defaults, found, folder, environ)
            if service is not None:
                services.append(service)
                origins[service.name] = found
    return services, origins


def _included(tree, found, folder):
    """[(services table, collector, folder)] of each file in the `include` folders:
    every NAME.yaml or NAME.yml, by name; others (backups, .dpkg-old) are not read."""
    if "include" not in tree:
        return []
    line = tree.lines["include"]
    raw = tree["include"]
    try:
        folders = values.string_list(raw if isinstance(raw, list) else [raw])
    except ValueError as err:
        found.add(line, "include", f"expected a folder or a list of folders: {err}")
        return []
    tables = []
    for text in folders:
        where = Path(folder, text)
        try:
            names = sorted(os.listdir(where)) if text else None
        except OSError as err:
            found.add(line, "include", f"cannot read folder {where}: {err.strerror}")
            continue
        if names is None:
            found.add(line, "include", "expected a folder, got ''")
            continue
        for name in names:
            path = where / name
            if path == Path(found.path):
                continue                      # `include: .` beside this file: not itself
            if name.endswith(INCLUDED_SUFFIXES) and not name.startswith(".") and path.is_file():
                table = _included_file(path, found)
                if table is not None:
                    tables.append((table, _Collector(path, found.problems, found.path), path.parent))
    return tables


def _included_file(path, found):
    """The services table of one included file, or None after its problems are filed."""
    mine = _Collector(path, found.problems, found.path)
    before = len(found.problems)
    tree = _read(path, mine)
    if len(found.problems) > before:
        return None
    if not isinstance(tree, yamlfile.Located) or not isinstance(tree.get("services"), yamlfile.Located):
        line = tree.lines.get("services", tree.line) if isinstance(tree, yamlfile.Located) else 1
        mine.add(line, "services", "expected a mapping of service name to settings")
        return None
    for key in tree:
        if key != "services" and not _is_extension(key):
            why = ("belongs in the main file" if key in TOP_KEYS else unknown(key, ("services",)))
            mine.add(tree.lines[key], key, why + " (an included file has services and x-NAME keys)")
    return tree["services"]


def _service(name, line, settings, defaults, found, folder, environ):
    if not isinstance(settings, yamlfile.Located):
        found.add(line, f"services.{name}", "expected a mapping of settings")
        return None
    before = len(found.problems)
    merged = {}
    for source, prefix in ((defaults, "defaults"), (settings, f"services.{name}")):
        for key, raw in source.items():
            if prefix == "defaults" and key in NOT_IN_DEFAULTS:
                continue
            convert = SERVICE_KEYS.get(key)
            if convert is None:
                found.add(source.lines[key], f"{prefix}.{key}", unknown(key, SERVICE_KEYS))
                continue
            try:
                merged[key] = (convert(raw), source.lines[key], f"{prefix}.{key}")
            except ValueError as err:
                found.add(source.lines[key], f"{prefix}.{key}", str(err))
    if len(found.problems) > before:
        return None
    return _resolve(name, line, merged, found, folder, environ)


def _resolve(name, line, merged, found, folder, environ):
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
            entry = _lookup(pwd.getpwnam, pwd.getpwuid, get["user"])
            uid, gid = entry.pw_uid, entry.pw_gid
            groups = tuple(os.getgrouplist(entry.pw_name, gid))
        except KeyError:
            found.add(*where["user"], f"no such user: {get['user']!r}")
    if "group" in get:
        try:
            gid = _lookup(grp.getgrnam, grp.getgrgid, get["group"]).gr_gid
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


def _lookup(by_name, by_id, text):
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


def _check_addresses(services, origins):
    """Two enabled services may not share an address (port 0 excepted).

    Overlaps count too: a bare PORT (every address, both families) or
    0.0.0.0:PORT / [::]:PORT collide with any address of their family on that port.
    """
    seen = []
    for service in services:
        if not service.enabled:
            continue
        for address in service.listen:
            if address.kind == "inet" and address.port == 0:
                continue
            for other, owner, protocol in seen:
                if protocol == service.protocol and _overlap(address, other):
                    origins[service.name].add(service.line, f"services.{service.name}.listen",
                              f"{address.text} overlaps {other.text} of service {owner!r}")
                    break
            else:
                seen.append((address, service.name, service.protocol))


def _overlap(a, b):
    if a.kind != b.kind:
        return False
    if a.kind == "unix":
        return a.path == b.path
    if a.port != b.port:
        return False
    families = {"": {4, 6}, "0.0.0.0": {4}, "::": {6}}
    fa = families.get(a.host, {6 if a.is_v6 else 4})
    fb = families.get(b.host, {6 if b.is_v6 else 4})
    if not fa & fb:
        return False
    return a.host == b.host or a.host in families or b.host in families


def example_text():
    """The packaged services file, which superd --print-example prints."""
    return Path(__file__).with_name("default.yaml").read_text()


def default_path(environ=None, cwd=None):
    """The file superd reads without -f (see DESIGN.md, 'The daemon')."""
    environ = os.environ if environ is None else environ
    if environ.get("SUPERD_CONFIG"):
        return environ["SUPERD_CONFIG"]
    for candidate in (Path(cwd or os.getcwd(), "etc/services.yaml"), Path("/etc/superd/services.yaml")):
        if candidate.is_file():
            return str(candidate)
    return str(Path(__file__).with_name("default.yaml"))

