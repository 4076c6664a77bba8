"""hello.py: the trivial Python handler of the preload bench.

Writes one line to the connection (fd 1, as every handler finds it under
superd) and exits.  contenders.build() copies it to bench/out/hello.py
behind a #! line that names superd's own interpreter, .venv/bin/python.
"""
import sys

sys.stdout.write("hello\n")
