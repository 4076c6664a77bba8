#!/usr/bin/env python3
"""HTTP bench: superd-httpd under superd against other small web servers.

Every server serves the same folder, bench/out/www (written here): a 1 KiB
index.html and cgi-bin/hello.sh, a two-line shell CGI script.  wrk (one
thread, 16 connections, pinned to the last CPU, bounded in time and, through
bench/wrk_json.lua, in requests) loads them in turn, A B C ... per round, in
three modes:

  keep-alive  GET /index.html on persistent connections (a server that
              closes after each response gets a new connection per request);
  close       GET /index.html with `Connection: close`: a new connection,
              and for superd-httpd under superd a new handler, per request;
  cgi         GET /cgi-bin/hello.sh: one CGI program run per request.

Contenders: superd-httpd under superd (nowait exec, nowait `preload: true`,
and `mode: wait`, where it accepts for itself in its own processes and
threads), `python -m http.server` (run as .venv/bin/python -m http.server,
CPython 3.11), busybox httpd standalone and `-i` under tcpserver, mini_httpd,
and nginx as the ceiling.  nginx and python's http.server run no CGI.

    .venv/bin/python bench/httpd_peers.py [-r ROUNDS] [-d SECONDS] [--publish]
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contenders as cs  # noqa: E402
import httpd_bench  # noqa: E402
import suite  # noqa: E402

WWW = cs.OUT / "www"
STATIC, CGI = "/index.html", "/cgi-bin/hello.sh"
WRK_SCRIPT = cs.BENCH / "wrk_json.lua"
CGI_SCRIPT = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n'\n"


def make_site():
    """bench/out/www, readable by the servers that drop to nobody."""
    (WWW / "cgi-bin").mkdir(parents=True, exist_ok=True)
    WWW.chmod(0o755)
    (WWW / "cgi-bin").chmod(0o755)
    line = "superd bench: a small static file of exactly one kibibyte.\n"
    page = WWW / "index.html"
    page.write_text((line * (1024 // len(line) + 1))[:1023] + "\n")
    page.chmod(0o644)
    script = WWW / "cgi-bin" / "hello.sh"
    script.write_text(CGI_SCRIPT)
    script.chmod(0o755)


HTTPD = {"server": None, "internal": "httpd", "args": f"[--root, {WWW}]"}


class HttpServer(cs.Contender):
    name = "http.server"
    describe = ("`.venv/bin/python -m http.server 0 --bind 127.0.0.1 --directory www` "
                "(CPython 3.11's, a thread per connection; it answers HTTP/1.0, so it closes "
                "every connection after one response; logs each request to stderr, a file here)")

    def start(self):
        proc = self.popen([str(cs.PYTHON), "-m", "http.server", "0", "--bind", "127.0.0.1",
                           "--directory", str(WWW)])
        self.port = cs.wait_for(lambda: cs.listening_port(proc.pid), self.name, proc)


class Busybox(cs.Contender):
    name = "busybox-httpd"
    describe = ("`busybox httpd -f -p 127.0.0.1:PORT -h www` (BusyBox 1.35, standalone: it "
                "forks a child per connection; no keep-alive; no access log)")

    def start(self):
        self.start_on_a_free_port(lambda port: [
            "busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(WWW)])


class BusyboxTcpserver(cs.Tcpserver):
    name = "busybox-httpd-i"
    describe = ("`tcpserver -1 -R -H -l 0 -b 1024 -c 1000 127.0.0.1 0 busybox httpd -i -h www` "
                "(inetd mode: fork + exec of busybox per connection)")
    program = ("/usr/bin/busybox", "httpd", "-i", "-h", str(WWW))


class MiniHttpd(cs.Contender):
    name = "mini_httpd"
    describe = ("`mini_httpd -D -p PORT -h 127.0.0.1 -d www -c 'cgi-bin/*' -l access.log` "
                "(1.30; a child per connection, as nobody; logs each request to a file)")

    def start(self):
        self.start_on_a_free_port(lambda port: [
            "mini_httpd", "-D", "-p", str(port), "-h", "127.0.0.1", "-d", str(WWW),
            "-c", "cgi-bin/*", "-l", str(self.dir / "access.log"),
            "-i", str(self.dir / "mini_httpd.pid")])


NGINX_CONF = """\
daemon off;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log {dir}/access.log;
    sendfile on;
    client_body_temp_path {dir}/tmp-body;
    proxy_temp_path {dir}/tmp-proxy;
    fastcgi_temp_path {dir}/tmp-fastcgi;
    uwsgi_temp_path {dir}/tmp-uwsgi;
    scgi_temp_path {dir}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {www};
    }}
}}
"""


class Nginx(cs.Contender):
    name = "nginx"
    describe = ("nginx 1.22 with a generated minimal nginx.conf: `daemon off`, "
                "`worker_processes auto` (one per CPU), `listen 127.0.0.1:PORT`, access log "
                "to a file, `sendfile on`, the ceiling")

    def start(self):
        def argv(port):
            conf = self.dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=self.dir, port=port, www=WWW))
            return ["nginx", "-e", str(self.dir / "error.log"), "-p", str(self.dir),
                    "-c", str(conf)]
        self.start_on_a_free_port(argv)


PER_REQUEST = "a handler per connection"
SUPERD_HTTPD = [
    cs.superd_variant("superd-httpd", HTTPD, f"{PER_REQUEST}, exec'd (python -S)"),
    cs.superd_variant("superd-httpd-preload", {**HTTPD, "preload": "true"},
                      f"{PER_REQUEST}, forked by the warm interpreter",
                      ready_event="preload-ready"),
    cs.superd_variant("superd-httpd-wait", {**HTTPD, "mode": "wait"},
                      "one superd-httpd that accepts for itself (its defaults: a worker "
                      "process per CPU, a thread per connection)"),
]
KINDS = SUPERD_HTTPD + [HttpServer, Busybox, BusyboxTcpserver, MiniHttpd, Nginx]
CGI_CAPABLE = tuple(k.name for k in SUPERD_HTTPD + [Busybox, BusyboxTcpserver, MiniHttpd])
MODES = {
    "keep-alive": suite.Mode(f"GET {STATIC} (1 KiB) on persistent connections",
                             options=(("path", STATIC),)),
    "close": suite.Mode(f"GET {STATIC} with `Connection: close`, a connection per request",
                        options=(("path", STATIC), ("close", True))),
    "cgi": suite.Mode(f"GET {CGI}, a shell CGI script per request",
                      options=(("path", CGI),), only=CGI_CAPABLE),
}


def wrk(contender, mode, concurrency, duration, maxconn):
    """One bounded wrk run (loopback only) in the shape of connload's results."""
    url = f"http://127.0.0.1:{contender.port}{mode.option('path')}"
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s",
           "--timeout", "5s", "-s", str(WRK_SCRIPT)]
    if mode.option("close"):
        cmd += ["-H", "Connection: close"]
    out, cpu = cs.measured(contender, cmd + [url, str(maxconn)], suite.LOAD_CPU,
                           timeout=duration + 60)
    s = json.loads(out.strip().splitlines()[-1])
    errors = {k: v for k, v in s["errors"].items() if v}
    res = {"completed": s["requests"], "per_s": s["requests"] / (s["duration_us"] / 1e6),
           "latency_us": s["latency_us"], "errors": errors,
           "errors_total": sum(errors.values()), "unfinished": 0,
           "capped": s["requests"] >= maxconn}
    res.update(cs.cpu_shares(cpu, s["requests"]))
    return res


def startup():
    """The httpd author's start-up measurement (bench/httpd_bench.py), reused as it is."""
    work = Path(tempfile.mkdtemp(prefix="http-startup-", dir=cs.OUT))
    boot = httpd_bench.startup(work, httpd_bench.make_site(work))
    bare = boot["python -S -c pass"]
    return "\n".join(
        ["Start-up, measured after the runs by `httpd_bench.startup()` (bench/httpd_bench.py): "
         "one request over a socketpair from a fresh `.venv/bin/python -S`, median of 40, ms.",
         "", "| run | ms | over bare |", "| --- | ---: | ---: |"]
        + [f"| {name} | {ms:.1f} | {ms - bare:+.1f} |" for name, ms in boot.items()]) + "\n"


def comparison():
    make_site()
    return suite.Comparison(
        name="http", title="HTTP requests", kinds=KINDS, modes=MODES, load=wrk,
        unit="req/s", log_scale=True,
        refs=(("vs http.server", "http.server"), ("vs busybox -i", "busybox-httpd-i"),
              ("vs mini_httpd", "mini_httpd"), ("vs nginx", "nginx")),
        legend="req/s: responses per second as wrk counts them (errors: wrk's connect, "
               "read, write, timeout and non-2xx/3xx counts); latency: request written to "
               "response read, per request.  CPU that no process of the contender's tree "
               "reaps counts as foreign, not children: busybox httpd standalone ignores "
               "SIGCHLD (the kernel reaps its children), and CGI programs that outlive their "
               "parent are re-parented away; so distrust foreign CPU in those rows",
        appendix=startup)


if __name__ == "__main__":
    suite.command(comparison, __doc__, rounds=5, duration=2.0)
