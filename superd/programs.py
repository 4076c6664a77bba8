"""What kind of program a service runs, read from its file alone.

Used by the config loader (preload needs a Python program) and by the
runtime; it imports nothing of the runtime, so `import superd.config` stays
free of spawn servers and sockets.
"""


def is_python_program(path):
    """A .py file, or a script whose #! line names a python interpreter."""
    if str(path).endswith(".py"):
        return True
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first
