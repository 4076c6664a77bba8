"""Connection ids: one per accepted connection and per wait-mode activation,
in the handler's environment as SUPERD_CONN and as conn=ID in every log line
about that connection, unique for the daemon's life across reloads."""

import re

from conftest import connect, python_handler, read_all
from test_protection_support import open_from, read_until_eof

ID_PRINTER = """
import os, sys
sys.stderr.write("conn " + os.environ["SUPERD_CONN"] + "\\n")
sys.stdout.write(os.environ["SUPERD_CONN"])
"""

WAIT_ID_PRINTER = """
import os, socket, sys
listener = socket.socket(fileno=0)
client, _ = listener.accept()
client.sendall(os.environ["SUPERD_CONN"].encode())
client.close()
"""


def conn_of(line):
    return int(re.search(r" conn=(\d+)", line).group(1))


def test_each_connection_has_one_id_in_its_environment_and_its_log_lines(superd, tmp_path):
    printer = python_handler(tmp_path, "ids.py", ID_PRINTER)
    d = superd(f"""
services:
  ids: {{listen: "127.0.0.1:0", server: {printer}, stderr: log}}
""", args=("--log-level", "debug"))
    seen = []
    for _ in range(3):
        with connect(d.address("ids")) as sock:
            seen.append(int(read_all(sock)))
    assert len(set(seen)) == 3 and seen == sorted(seen)
    for conn_id in seen:
        exit_line = d.log.wait_for(rf"^exit service=ids .* conn={conn_id} ")
        start_line = d.log.wait_for(rf"^start level=debug service=ids .* conn={conn_id} ")
        stderr_line = d.log.wait_for(rf'^stderr service=ids .*text="conn {conn_id}"')
        assert conn_of(exit_line) == conn_of(start_line) == conn_of(stderr_line) == conn_id
        pid = re.search(r" pid=(\d+)", exit_line).group(1)
        assert f" pid={pid} " in start_line and f" pid={pid} " in stderr_line


def test_a_wait_mode_activation_has_an_id_too(superd, tmp_path):
    handler = python_handler(tmp_path, "waitids.py", WAIT_ID_PRINTER)
    d = superd(f"""
services:
  w: {{listen: "127.0.0.1:0", server: {handler}, mode: wait}}
""")
    first = _ask(d.address("w"))
    line = d.log.wait_for(rf"^exit service=w .* conn={first} ")
    assert "status=0" in line
    second = _ask(d.address("w"))
    assert second > first, "each activation its own id"


def _ask(address):
    with connect(address) as sock:
        return int(read_all(sock))


def test_ids_go_on_counting_across_a_reload_and_refusals_carry_theirs(superd, tmp_path):
    printer = python_handler(tmp_path, "ids.py", ID_PRINTER)
    config = f"""
services:
  ids: {{listen: "127.0.0.1:0", server: {printer}, only_from: [127.0.0.1]}}
"""
    d = superd(config)
    before = _ask(d.address("ids"))
    with open_from(d.address("ids"), source="127.0.0.2") as sock:
        assert read_until_eof(sock) == b"", "refused: closed unserved"
    refused = d.log.wait_for(r"^refused service=ids client=127\.0\.0\.2:\d+ conn=\d+ reason=only_from$")
    d.reload(config.replace("127.0.0.1]", "127.0.0.1, 127.0.0.3]"))
    after = _ask(d.address("ids"))
    assert before < conn_of(refused) < after, "one sequence for the daemon's life"
