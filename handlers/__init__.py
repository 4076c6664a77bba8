"""The handler programs bundled with superd.

Each module here is a standalone program that uses only the standard library:
copy one file to any machine and run it under inetd, xinetd, systemd socket
activation, tcpserver or superd.  Installed, they are the `superd-<name>`
commands and the `internal:` services.
"""
