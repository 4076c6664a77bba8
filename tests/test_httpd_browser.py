"""A real browser against superd-httpd: headless Chromium loads the example
site (etc/www) and submits its CGI form.

The server is superd-httpd --listen on port 0 (accepting for itself, one
thread per connection: Chromium opens several).  The page is checked with
`chromium --dump-dom`; the form is filled in and sent through chromedriver,
spoken to over its W3C WebDriver HTTP API with http.client (no selenium).
The copied CGI program runs under this interpreter, not the python3 on PATH.
"""

import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_httpd_support import HANDLER, TIMEOUT, Lines, kill_group

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
BROWSER_TIMEOUT = 60
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"     # the W3C WebDriver element key


def chromium_flags(profile):
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--user-data-dir=%s" % profile]


@pytest.fixture
def procs():
    started = []

    def start(argv, **kw):
        proc = subprocess.Popen([str(a) for a in argv], start_new_session=True, **kw)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        kill_group(proc)


@pytest.fixture
def example_site(procs, tmp_path):
    """(url, server log) of superd-httpd serving a copy of etc/www."""
    assert Path(CHROMIUM).exists(), "chromium is not installed (.ci/run installs it)"
    root = tmp_path / "www"
    shutil.copytree(ROOT / "etc" / "www", root)
    form = root / "cgi-bin" / "form.py"
    form.write_text(form.read_text().replace("#!/usr/bin/env python3", "#!" + sys.executable, 1))
    proc = procs([sys.executable, HANDLER, "--root", root, "--listen", "127.0.0.1:0"],
                 stderr=subprocess.PIPE)
    log = Lines(proc.stderr)
    port = log.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
    return "http://127.0.0.1:%s" % port, log


def test_dump_dom_of_the_index_page(procs, tmp_path, example_site):
    url, log = example_site
    proc = procs([CHROMIUM, *chromium_flags(tmp_path / "profile"), "--dump-dom", url + "/"],
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out, _ = proc.communicate(timeout=BROWSER_TIMEOUT)
    dom = out.decode()
    assert "<h1>It works</h1>" in dom
    assert '<form id="guestbook" method="post" action="/cgi-bin/form.py">' in dom
    log.wait_for(r'"GET / HTTP/1\.1" 200 \d+ "-" ".*Chrome')


class WebDriver:
    """Just enough of the W3C WebDriver protocol, over http.client."""

    def __init__(self, port):
        self.port = port
        self.session = None

    def call(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=BROWSER_TIMEOUT)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        assert response.status == 200, data
        return data.get("value")

    def start(self, args):
        value = self.call("POST", "/session", {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}})
        self.session = "/session/" + value["sessionId"]
        self.call("POST", self.session + "/timeouts", {"implicit": 20000, "pageLoad": 30000})

    def go(self, url):
        self.call("POST", self.session + "/url", {"url": url})

    def find(self, css):
        return self.call("POST", self.session + "/element",
                         {"using": "css selector", "value": css})[ELEMENT]

    def type(self, element, text):
        self.call("POST", "%s/element/%s/value" % (self.session, element), {"text": text})

    def click(self, element):
        self.call("POST", "%s/element/%s/click" % (self.session, element), {})

    def text(self, element):
        return self.call("GET", "%s/element/%s/text" % (self.session, element))

    def quit(self):
        if self.session:
            self.call("DELETE", self.session)


def test_form_submission(procs, tmp_path, example_site):
    url, log = example_site
    assert Path(CHROMEDRIVER).exists(), "chromium-driver is not installed (.ci/run installs it)"
    driver_proc = procs([CHROMEDRIVER, "--port=0"], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL)
    port = int(Lines(driver_proc.stdout).wait_for(r"started successfully on port (\d+)").group(1))
    driver = WebDriver(port)
    driver.start(chromium_flags(tmp_path / "profile"))
    try:
        driver.go(url + "/")
        driver.type(driver.find("#name"), "Ada <Lovelace>")
        driver.type(driver.find("#message"), "1 + 1 & 2 > 1\nsecond line")
        driver.click(driver.find("#send"))
        assert driver.text(driver.find("#greeting")) == "Hello, Ada <Lovelace>"
        assert driver.text(driver.find("#message")) == "1 + 1 & 2 > 1\nsecond line"
        meta = driver.text(driver.find("#meta"))
        assert "POST" in meta and "application/x-www-form-urlencoded" in meta
    finally:
        driver.quit()
    log.wait_for(r'"POST /cgi-bin/form\.py HTTP/1\.1" 200 \d+ "%s/" ".*Chrome' % url)
