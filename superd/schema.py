"""What a valid services.yaml is: the records a loaded file becomes, and its keys.

`Service` and `Config` are frozen: the daemon reads them and never writes
them.  `SERVICE_KEYS` is the table of per-service keys, each with the pure
converter that checks its value (superd/values.py); a key that is not a row
is an error, and `unknown()` says which key was probably meant.  Nothing
here reads a file or looks anything up (superd/config.py reads, and
superd/resolve.py resolves).
"""

import difflib
from dataclasses import dataclass

from superd import values
from superd.handlers_path import INTERNAL

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


def unknown(key, known):
    """'unknown key', and the key meant, if a near or a foreign one names it."""
    text = str(key)
    if text in FOREIGN_KEYS and text not in known:
        return (f"unknown key (xinetd's {text} is {FOREIGN_KEYS[text]} here; "
                "superd import converts xinetd and inetd.conf files)")
    close = difflib.get_close_matches(text, list(known), n=1, cutoff=0.6)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
