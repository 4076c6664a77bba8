"""services.yaml to validated, immutable configuration.

This is the only module that reads YAML.  `load(path)` reads the file and
the folders it includes, converts each key through superd/schema.py's table,
merges defaults into each service, and has superd/resolve.py resolve it into
a frozen `Service`.  Every problem in every file is collected with its file,
line and key, and raised together as one `ConfigError`, so `superd --check`
can print them all at once.

The records and the key table live in superd/schema.py and are re-exported
here: `config.load`, `config.ConfigError` and `config.Service` are the
interface the rest of superd uses.
"""

import grp
import os
from pathlib import Path

from superd import resolve, values, yamlfile
from superd.schema import (NOT_IN_DEFAULTS, SERVICE_KEYS, TOP_KEYS, Config, ConfigError,
                           Problem, Service, unknown)

__all__ = ["load", "default_path", "example_text", "Config", "ConfigError", "Problem",
           "Service", "SERVICE_KEYS", "TOP_KEYS", "unknown"]

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
            gid = resolve.lookup(grp.getgrnam, grp.getgrgid, values.name_or_id(value)).gr_gid
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
    return resolve.service(name, line, merged, found, folder, environ)




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

