/*
 * connload: a connect-read-close load generator for inetd-style servers.
 *
 * Keeps N connections in flight against one loopback TCP address.  Each
 * connection: non-blocking connect, read until EOF, close, start the next.
 * The run ends when the duration has passed or the maximum number of
 * connections has been started, whichever comes first; connections still in
 * flight then get a short drain period.  Every connection that reaches its
 * first byte records its connect-to-first-byte latency.  Prints one JSON
 * object on stdout.
 *
 * Safety: the target must be in 127.0.0.0/8 or be ::1 (checked below, not
 * configurable), and the load is bounded in time and in count.
 *
 * usage: connload -a ADDR -p PORT [-c CONCURRENCY] [-d SECONDS] [-n MAXCONN]
 *                 [-t CONN_TIMEOUT_S] [-q]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum state { IDLE, CONNECTING, READING };

struct conn {
    int fd;                 /* -1 when idle */
    enum state state;
    double started;         /* monotonic seconds at connect() */
    int got_first;          /* first byte seen */
};

/* errors by kind: a small open table keyed by name */
#define MAX_KINDS 32
static struct { char name[48]; long count; } kinds[MAX_KINDS];
static int nkinds;

static void count_error(const char *stage, int err)
{
    char name[48];
    const char *en = err ? strerrorname_np(err) : NULL;
    if (err == 0)
        snprintf(name, sizeof name, "%s", stage);
    else if (en)
        snprintf(name, sizeof name, "%s_%s", stage, en);
    else
        snprintf(name, sizeof name, "%s_errno%d", stage, err);
    for (int i = 0; i < nkinds; i++)
        if (strcmp(kinds[i].name, name) == 0) { kinds[i].count++; return; }
    if (nkinds < MAX_KINDS) {
        snprintf(kinds[nkinds].name, sizeof kinds[nkinds].name, "%s", name);
        kinds[nkinds++].count = 1;
    }
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *msg)
{
    fprintf(stderr, "connload: %s\n", msg);
    exit(64);
}

/* The hard check: loopback only.  IPv4 127.0.0.0/8, IPv6 ::1 exactly. */
static int parse_loopback(const char *addr, int port,
                          struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, addr, &s4->sin_addr) == 1) {
        if ((ntohl(s4->sin_addr.s_addr) >> 24) != 127)
            return -1;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *len = sizeof *s4;
        return 0;
    }
    if (inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr))
            return -1;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        *len = sizeof *s6;
        return 0;
    }
    return -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, long n, double p)
{
    if (n == 0)
        return 0;
    long i = (long)(p / 100.0 * (n - 1) + 0.5);
    return v[i];
}

/* run state */
static struct sockaddr_storage target;
static socklen_t target_len;
static int ep;
static long started, completed, inflight;
static double *lat;        /* seconds, one per connection that got a byte */
static long nlat;
static long long bytes;

static void finish(struct conn *c)
{
    close(c->fd);          /* also removes it from the epoll set */
    c->fd = -1;
    c->state = IDLE;
    inflight--;
}

static void start(struct conn *c)
{
    int fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    started++;
    if (fd < 0) {
        count_error("socket", errno);
        return;
    }
    c->fd = fd;
    c->got_first = 0;
    c->started = now();
    inflight++;
    struct epoll_event ev = { .data.ptr = c };
    if (connect(fd, (struct sockaddr *)&target, target_len) == 0) {
        c->state = READING;
        ev.events = EPOLLIN;
    } else if (errno == EINPROGRESS) {
        c->state = CONNECTING;
        ev.events = EPOLLOUT;
    } else {
        count_error("connect", errno);
        finish(c);
        return;
    }
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        count_error("epoll_ctl", errno);
        finish(c);
    }
}

static void on_event(struct conn *c)
{
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            count_error("connect", err);
            finish(c);
            return;
        }
        c->state = READING;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        return;    /* level-triggered: EPOLLIN comes when data does */
    }
    char buf[4096];
    for (;;) {
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r > 0) {
            if (!c->got_first) {
                c->got_first = 1;
                lat[nlat++] = now() - c->started;
            }
            bytes += r;
            continue;
        }
        if (r == 0) {
            if (c->got_first)
                completed++;
            else
                count_error("eof_without_data", 0);
            finish(c);
            return;
        }
        if (errno == EAGAIN || errno == EINTR)
            return;
        count_error("read", errno);
        finish(c);
        return;
    }
}

int main(int argc, char **argv)
{
    const char *addr = NULL;
    int port = 0, conc = 32, quiet = 0;
    double duration = 5, conn_timeout = 10;
    long maxconn = 100000;
    int opt;
    while ((opt = getopt(argc, argv, "a:p:c:d:n:t:q")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': conc = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'n': maxconn = atol(optarg); break;
        case 't': conn_timeout = atof(optarg); break;
        case 'q': quiet = 1; break;
        default: die("usage: connload -a ADDR -p PORT [-c N] [-d S] [-n MAX] [-t S] [-q]");
        }
    }
    if (!addr || port <= 0 || port > 65535)
        die("need -a ADDR and -p PORT (1-65535)");
    if (parse_loopback(addr, port, &target, &target_len) < 0)
        die("refusing target: only 127.0.0.0/8 and ::1 are allowed");
    /* bounds: finite, and small enough for one machine */
    if (conc < 1 || conc > 4096)
        die("-c must be 1..4096");
    if (!(duration > 0 && duration <= 600))
        die("-d must be in (0, 600] seconds");
    if (maxconn < 1 || maxconn > 10000000)
        die("-n must be 1..10000000");
    if (!(conn_timeout > 0 && conn_timeout <= 60))
        die("-t must be in (0, 60] seconds");

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)conc + 16) {
        rl.rlim_cur = rl.rlim_max < (rlim_t)conc + 16 ? rl.rlim_max : (rlim_t)conc + 16;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    lat = malloc(sizeof *lat * maxconn);
    struct conn *conns = calloc(conc, sizeof *conns);
    struct epoll_event *evs = malloc(sizeof *evs * conc);
    if (!lat || !conns || !evs)
        die("out of memory");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1 failed");
    for (int i = 0; i < conc; i++)
        conns[i].fd = -1;

    const double drain = conn_timeout;
    double t0 = now(), deadline = t0 + duration, last_done = t0, next_scan = t0 + 0.1;
    int stopping = 0;
    for (;;) {
        double t = now();
        if (!stopping && (t >= deadline || started >= maxconn))
            stopping = 1;
        if (!stopping)
            for (int i = 0; i < conc && started < maxconn; i++)
                if (conns[i].fd < 0)
                    start(&conns[i]);
        if (stopping && inflight == 0)
            break;
        if (stopping && t >= deadline + drain)
            break;
        int n = epoll_wait(ep, evs, conc, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait failed");
        for (int i = 0; i < n; i++) {
            long before = completed;
            on_event(evs[i].data.ptr);
            if (completed != before)
                last_done = now();
        }
        t = now();
        if (t >= next_scan) {          /* per-connection timeouts */
            next_scan = t + 0.1;
            for (int i = 0; i < conc; i++)
                if (conns[i].fd >= 0 && t - conns[i].started > conn_timeout) {
                    count_error(conns[i].state == CONNECTING ? "connect_timeout"
                                                             : "read_timeout", 0);
                    finish(&conns[i]);
                }
        }
    }
    long unfinished = 0;
    for (int i = 0; i < conc; i++)
        if (conns[i].fd >= 0) {
            unfinished++;
            finish(&conns[i]);
        }

    qsort(lat, nlat, sizeof *lat, cmp_double);
    double sum = 0;
    for (long i = 0; i < nlat; i++)
        sum += lat[i];
    double elapsed = last_done - t0;
    long errors = 0;
    for (int i = 0; i < nkinds; i++)
        errors += kinds[i].count;

    printf("{\"target\": \"%s\", \"port\": %d, \"concurrency\": %d, "
           "\"duration_s\": %g, \"max_connections\": %ld, "
           "\"elapsed_s\": %.6f, \"started\": %ld, \"completed\": %ld, "
           "\"unfinished\": %ld, \"errors_total\": %ld, \"errors\": {",
           addr, port, conc, duration, maxconn, elapsed, started, completed,
           unfinished, errors);
    for (int i = 0; i < nkinds; i++)
        printf("%s\"%s\": %ld", i ? ", " : "", kinds[i].name, kinds[i].count);
    printf("}, \"bytes\": %lld, \"conn_per_s\": %.1f, \"latency_us\": "
           "{\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"max\": %.1f, \"mean\": %.1f}}\n",
           bytes, elapsed > 0 ? completed / elapsed : 0.0,
           pct(lat, nlat, 50) * 1e6, pct(lat, nlat, 90) * 1e6,
           pct(lat, nlat, 99) * 1e6, nlat ? lat[nlat - 1] * 1e6 : 0.0,
           nlat ? sum / nlat * 1e6 : 0.0);
    if (!quiet && errors)
        fprintf(stderr, "connload: %ld errors\n", errors);
    return 0;
}
