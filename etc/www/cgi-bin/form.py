#!/usr/bin/env python3
"""The example site's CGI form handler (RFC 3875).

A POST carries the form in its body (application/x-www-form-urlencoded)
on standard input, CONTENT_LENGTH bytes long; a GET may carry it in
QUERY_STRING.  The answer is a small HTML page that shows what arrived,
every value escaped, and a few of the meta-variables the server set.
"""

import html
import os
import sys
from urllib.parse import parse_qs

MAX_BODY = 64 * 1024


def form_data():
    if os.environ.get("REQUEST_METHOD") == "POST":
        length = int(os.environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_BODY:
            return None
        text = sys.stdin.buffer.read(length).decode("utf-8", "replace")
    else:
        text = os.environ.get("QUERY_STRING", "")
    return parse_qs(text, keep_blank_values=True, max_num_fields=20)


def page(title, body):
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>%s</title></head>\n<body>\n%s\n"
            "<p><a href=\"/\">Back to the form</a></p>\n</body></html>\n" % (title, body))


def main():
    fields = form_data()
    out = sys.stdout
    if fields is None:
        out.write("Status: 413 Content Too Large\r\nContent-Type: text/plain\r\n\r\n"
                  "That form is too large.\n")
        return
    name = fields.get("name", [""])[0].strip() or "stranger"
    message = fields.get("message", [""])[0]
    meta = "".join("<tr><th>%s</th><td>%s</td></tr>" % (key, html.escape(os.environ.get(key, "")))
                   for key in ("REQUEST_METHOD", "CONTENT_TYPE", "CONTENT_LENGTH",
                               "REMOTE_ADDR", "SERVER_SOFTWARE", "GATEWAY_INTERFACE"))
    body = ("<h1 id=\"greeting\">Hello, %s</h1>\n"
            "<p>Your message:</p>\n<pre id=\"message\">%s</pre>\n"
            "<table id=\"meta\">%s</table>"
            % (html.escape(name), html.escape(message), meta))
    out.write("Content-Type: text/html; charset=utf-8\r\n\r\n")
    out.write(page("Thank you", body))


if __name__ == "__main__":
    main()
