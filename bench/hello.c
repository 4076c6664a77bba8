/* hello: the tiny compiled handler for the dispatch bench.
 *
 * Writes one line to the connection and exits.  It finds the connection as
 * every superd handler does (DESIGN.md): fd 3 when LISTEN_FDS names this
 * process (systemd-socket-activate --accept), else fd 1 (superd, inetd,
 * xinetd, tcpserver). */
#include <stdlib.h>
#include <unistd.h>

int main(void)
{
    static const char line[] = "hello\n";
    const char *fds = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");
    int fd = fds && pid && atoi(fds) >= 1 && atol(pid) == (long)getpid() ? 3 : 1;
    return write(fd, line, sizeof line - 1) == sizeof line - 1 ? 0 : 1;
}
