"""What the control socket's commands do, read from and acted on the records.

`Commands.answer(request)` gets one request object (`{"command": NAME, ...}`)
and returns one answer object: `{"ok": true, ...}`, or `{"ok": false,
"error": WHY}` when the daemon refuses.  superdctl(8) documents each
command; DESIGN.md's Operations table is the contract.  Everything here
runs in the loop and returns at once (a reload is loaded and applied
before the answer, which is its verdict).
"""

import dataclasses
import ipaddress

from superd import snapshot
from superd.records import PROXY_WAIT, QUEUED
from superd.status import BUCKETS

OPERATOR = "operator"     # the pause reason `superdctl pause` sets


class Commands:
    def __init__(self, services, table, children, intake, proxies, history, clock, log,
                 reload, config, daemon, upgrade):
        self.services = services
        self.table = table
        self.children = children
        self.intake = intake
        self.proxies = proxies
        self.history = history
        self.clock = clock
        self.log = log
        self.reload = reload      # () -> verdict dict
        self.config = config      # () -> the running config.Config
        self.daemon = daemon      # () -> snapshot.daemon's dict
        self.start_upgrade = upgrade   # (respond) -> refusal, or None: respond() with the verdict
        self.table_of = {"status": self.status, "list": self.list, "kill": self.kill,
                         "pause": self.pause, "resume": self.resume,
                         "reload": lambda request: self.reload(),
                         "config": self.effective_config, "upgrade": self.upgrade}

    def answer(self, request, respond):
        """The answer, or None when it comes later through respond(answer) (upgrade)."""
        command = self.table_of.get(request["command"])
        if command is None:
            return refused(f"unknown command {shown(request['command'])} "
                           f"(known: {', '.join(self.table_of)})")
        if command == self.upgrade:
            return self.upgrade(respond)
        return command(request)

    def status(self, request):
        """The whole document; "connections": false and "history": false leave
        those parts out (a /metrics scrape needs neither, and with thousands of
        live connections they are most of the work)."""
        wanted = {}
        for part in ("connections", "history"):
            wanted[part] = request.get(part, True)
            if not isinstance(wanted[part], bool):
                return refused(f"{part}: expected true or false, got {shown(wanted[part])}")
        records = list(self.services)
        answer = {"ok": True, "daemon": self.daemon(), "buckets": list(BUCKETS),
                  "services": [snapshot.service(r) for r in records]}
        if wanted["connections"]:
            answer["connections"] = snapshot.connections(self.table, self.clock())
        if wanted["history"]:
            answer["history"] = self.history.document(records)
        return answer

    def list(self, request):
        name = request.get("service")
        if name is not None and (not isinstance(name, str) or self.services.get(name) is None):
            return refused(f"no service {shown(name)}")   # a list or an object is no name
        return {"ok": True, "connections": snapshot.connections(self.table, self.clock(), name)}

    def kill(self, request):
        ids = request.get("ids")
        if (not isinstance(ids, list) or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
            return refused('kill needs "ids": a list of connection ids')
        unknown = [i for i in ids if i not in self.table.live]
        if unknown:
            return refused("no connection " + ", ".join(map(str, unknown)))
        for conn_id in ids:
            self._kill(self.table.live[conn_id])
        return {"ok": True, "killed": ids}

    def _kill(self, conn):
        self.log.info("kill", service=conn.record.name, client=conn.client, conn=conn.id,
                      **({"pid": conn.pid} if conn.pid else {}), state=conn.state)
        if conn.pid is not None:
            self.children.end(conn)
        elif conn.state == PROXY_WAIT:
            self.proxies.drop(conn, "killed", "by the operator")
        elif conn.state == QUEUED:
            if conn in conn.record.queue:
                conn.record.queue.remove(conn)
            self.intake.refuse(conn, "killed")
        else:                     # being started by a helper server: its pid comes soon
            self.children.end_when_started(conn)

    def pause(self, request):
        record = self._record(request)
        if isinstance(record, dict):
            return record
        self.services.pause(record, OPERATOR, None)
        return {"ok": True, "service": record.name, "paused": record.paused()}

    def resume(self, request):
        record = self._record(request)
        if isinstance(record, dict):
            return record
        if OPERATOR not in record.pauses:
            return refused(f"{record.name} is not paused by an operator"
                           + (f" (paused: {', '.join(record.paused())})" if record.paused() else ""))
        self.services.resume(record, OPERATOR)
        return {"ok": True, "service": record.name, "paused": record.paused()}

    def _record(self, request):
        name = request.get("service")
        record = self.services.get(name) if isinstance(name, str) else None
        return record or refused(f"no service {shown(name)}")

    def effective_config(self, request):
        config = self.config()
        return {"ok": True, "path": config.path,
                "services": {s.name: {f.name: plain(getattr(s, f.name))
                                      for f in dataclasses.fields(s)} for s in config.services}}

    def upgrade(self, respond):
        return self.start_upgrade(respond)


def refused(why):
    return {"ok": False, "error": why}


def shown(value, limit=80):
    """A value from a request, quoted in an error: its repr, cut to limit."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plain(value):
    """A config value as JSON has it (addresses and networks as their text)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if hasattr(value, "text"):
        return value.text
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
