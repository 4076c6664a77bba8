"""superdctl's tables for people: one function per command's answer.

Columns are padded to their widest cell; a value that is missing shows as
"-".  The JSON (--json) is the stable interface; these tables are for eyes.
"""

import json


def show(command, answer, out):
    SHOW.get(command, _plain)(answer, out)


def table(rows, header, out):
    rows = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    for row in [header] + rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


def _cell(value):
    return "-" if value is None or value == "" else str(value)


def _status(answer, out):
    rows = []
    for s in answer.get("services", []):
        state = s["state"] + (f" ({','.join(s['paused'])})" if s.get("paused") else "")
        refused = ",".join(f"{k}={v}" for k, v in sorted(s.get("refused", {}).items()))
        exits = ",".join(f"{k}={v}" for k, v in s.get("exits", {}).items() if v)
        rows.append([s["name"], " ".join(s["addresses"]), s["mode"], state,
                     f"{s['running']}/{s['instances']}", s["accepted"], refused, exits])
    table(rows, ["SERVICE", "ADDRESSES", "MODE", "STATE", "RUNNING", "ACCEPTED", "REFUSED",
                 "EXITS"], out)


def _list(answer, out):
    rows = [[c["id"], c["service"], c["client"], c["local"], c["pid"], c["state"],
             f"{c['age']:.1f}s"] for c in answer.get("connections", [])]
    table(rows, ["ID", "SERVICE", "CLIENT", "LOCAL", "PID", "STATE", "AGE"], out)


def _kill(answer, out):
    for conn_id in answer.get("killed", []):
        out.write(f"killed {conn_id}\n")


def _paused(answer, out):
    paused = answer.get("paused") or []
    out.write(f"{answer['service']}: " + (f"paused ({', '.join(paused)})" if paused else "serving") + "\n")


def _reload(answer, out):
    parts = [f"{key} {', '.join(answer[key])}" for key in ("added", "removed", "changed")
             if answer.get(key)]
    out.write("reloaded: " + ("; ".join(parts) if parts else "nothing changed") + "\n")


def _config(answer, out):
    import yaml
    out.write(f"# {answer.get('path', '')}\n")
    out.write(yaml.safe_dump({"services": answer.get("services", {})}, sort_keys=False))


def _plain(answer, out):
    out.write(json.dumps(answer, indent=2) + "\n")


SHOW = {"status": _status, "list": _list, "kill": _kill, "pause": _paused, "resume": _paused,
        "reload": _reload, "config": _config}
