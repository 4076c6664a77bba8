"""superd: an inetd-style super-server.

The supervisor listens on the addresses named in services.yaml and, for each
connection (or, in wait mode, for each burst of activity on a listener), starts
a separate handler program with the socket as its standard input and output.
"""

__version__ = "0.1.0"
