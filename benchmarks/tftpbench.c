/*
 * tftpbench: a TFTP read load generator for benchmarking servers on loopback.
 *
 *   gcc -O2 -o tftpbench tftpbench.c
 *   tftpbench -p PORT -r ROOT -f FILE [-s 127.0.0.1] [-c SESSIONS] [-n TOTAL | -d SECONDS]
 *             [-b BLKSIZE] [-w WINDOWSIZE] [-t TIMEOUT_MS] [-R RETRIES] [-m MAX_TIME]
 *
 * One process, one epoll set, many concurrent sessions, each with its own UDP
 * socket (the client TID of RFC 1350). Every session reads FILE with an octet
 * RRQ asking for blksize and tsize (RFC 2347-2349) and, with -w, windowsize
 * (RFC 7440), and checks every byte it receives against ROOT/FILE. It prints
 * one JSON line, including its own CPU time, so that whoever runs it can show
 * the load generator was not the bottleneck.
 *
 * Written from the RFCs for tftpd_tx's benchmarks/run.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { OP_RRQ = 1, OP_DATA = 3, OP_ACK = 4, OP_ERROR = 5, OP_OACK = 6 };
enum { MAX_BLKSIZE = 65464, PKT_MAX = MAX_BLKSIZE + 4, SCAN_EVERY = 10 /* ms */ };

/* Why a transfer failed; the JSON output counts each kind. */
enum fail { F_TIMEOUT, F_ERROR, F_MISMATCH, F_PROTOCOL, F_SOCKET, F_UNFINISHED, F_KINDS };
static const char *fail_names[F_KINDS] = {
    "timeout", "error", "mismatch", "protocol", "socket", "unfinished"};
/* Packet handlers return a failure kind, 0 (transfer done) or one of these. */
enum { GO_ON = -1, WAIT = -2 };

struct session {
    int fd;                   /* -1 when the slot is idle */
    int have_peer;            /* the server's TID is known and connect()ed */
    uint16_t next;            /* block number expected next (wraps 65535 -> 0) */
    uint64_t blocks;          /* blocks received in order: next block is at blocks * blksize */
    unsigned blksize, window; /* as granted by the server */
    unsigned in_window;       /* in-order blocks since the last ACK we sent */
    int resynced;             /* already ACKed once for a gap or duplicate since progress */
    int tries;                /* retransmissions since the last progress */
    double started, deadline; /* seconds, CLOCK_MONOTONIC */
};

static struct {
    /* settings */
    struct sockaddr_storage server;
    socklen_t server_len;
    const char *file;
    unsigned char rrq[512];   /* the same request for every transfer */
    size_t rrq_len;
    int file_fd;
    uint64_t file_size;
    unsigned sessions, blksize, window, retries;
    long total;               /* -n: transfers to run, or -1 */
    double duration, timeout, max_time;
    /* run state */
    int ep;
    struct session *s;
    long started, active, completed, failed[F_KINDS];
    long retransmits, out_of_order;
    uint64_t bytes;
    unsigned granted_blksize, granted_window;
    double t0, *latency;
    long latency_cap;
} g;

static unsigned char rxbuf[PKT_MAX], filebuf[PKT_MAX];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *msg) {
    fprintf(stderr, "tftpbench: %s\n", msg);
    exit(2);
}

/* Loopback only: this tool floods its target, so it never leaves the machine. */
static void parse_server(const char *host, int port) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&g.server;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&g.server;
    memset(&g.server, 0, sizeof g.server);
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127) die("server must be in 127.0.0.0/8 or ::1");
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        g.server_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr)) die("server must be in 127.0.0.0/8 or ::1");
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        g.server_len = sizeof *v6;
    } else {
        die("server must be a numeric address");
    }
}

static size_t put_str(unsigned char *p, const char *str) {
    size_t n = strlen(str) + 1;
    memcpy(p, str, n);
    return n;
}

/* RRQ: file, "octet", then the options (RFC 2347): blksize, tsize 0 (RFC 2349: "tell me
 * the size"), windowsize only when asked for, so that -w 0 measures plain lock-step. */
static void build_rrq(void) {
    unsigned char *p = g.rrq;
    char num[16];
    *p++ = 0, *p++ = OP_RRQ;
    p += put_str(p, g.file);
    p += put_str(p, "octet");
    p += put_str(p, "blksize");
    snprintf(num, sizeof num, "%u", g.blksize);
    p += put_str(p, num);
    p += put_str(p, "tsize");
    p += put_str(p, "0");
    if (g.window) {
        p += put_str(p, "windowsize");
        snprintf(num, sizeof num, "%u", g.window);
        p += put_str(p, num);
    }
    g.rrq_len = p - g.rrq;
}

static void send_ack(struct session *s, uint16_t block) {
    unsigned char ack[4] = {0, OP_ACK, block >> 8, block & 0xff};
    send(s->fd, ack, 4, 0); /* a lost ACK is recovered by the timeout, like a lost datagram */
    s->in_window = 0;
}

static int may_start(double t) {
    if (t - g.t0 >= g.max_time) return 0;
    if (g.total >= 0) return g.started < g.total;
    return t - g.t0 < g.duration;
}

static void start(struct session *s, double t) {
    /* A new socket per transfer: every transfer gets a fresh TID (RFC 1350, section 4). */
    s->fd = socket(g.server.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) die("socket() failed (raise the open file limit?)");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) die("epoll_ctl() failed");
    s->have_peer = 0;
    s->next = 1;
    s->blocks = 0;
    s->blksize = 512; /* RFC 1350 defaults, unless an OACK says otherwise */
    s->window = 1;
    s->in_window = s->resynced = s->tries = 0;
    s->started = t;
    s->deadline = t + g.timeout;
    g.started++;
    g.active++;
    sendto(s->fd, g.rrq, g.rrq_len, 0, (struct sockaddr *)&g.server, g.server_len);
}

/* End a transfer (fail < 0: completed) and start the next one in the same slot.
 * On failure, tell the server to drop its session rather than let it time out. */
static void finish(struct session *s, int fail, double t) {
    if (fail >= 0) {
        g.failed[fail]++;
        if (s->have_peer && fail != F_ERROR && fail != F_SOCKET) {
            unsigned char err[16] = {0, OP_ERROR, 0, 0}; /* code 0, "aborted" */
            send(s->fd, err, 4 + put_str(err + 4, "aborted"), 0);
        }
    } else {
        g.completed++;
        g.bytes += g.file_size;
        if (g.completed > g.latency_cap) {
            g.latency_cap = g.latency_cap ? g.latency_cap * 2 : 4096;
            g.latency = realloc(g.latency, g.latency_cap * sizeof *g.latency);
            if (!g.latency) die("out of memory");
        }
        g.latency[g.completed - 1] = t - s->started;
    }
    close(s->fd); /* also removes it from the epoll set */
    s->fd = -1;
    g.active--;
    /* A stale event for the old socket may still be pending in this epoll batch; it
     * then only drains the new socket (non-blocking, keyed by slot), which is harmless. */
    if (may_start(t)) start(s, t);
}

/* RFC 2347 OACK: accept only what we asked for, no more than we asked for.
 * Returns a failure kind or GO_ON. */
static int parse_oack(struct session *s, const unsigned char *p, size_t len) {
    const char *end = (const char *)p + len, *name = (const char *)p;
    if (len == 0 || p[len - 1] != 0) return F_PROTOCOL;
    while (name < end) {
        const char *value = name + strlen(name) + 1;
        if (value >= end) return F_PROTOCOL;
        char *rest;
        unsigned long v = strtoul(value, &rest, 10);
        if (*value == 0 || *rest != 0) return F_PROTOCOL;
        if (!strcasecmp(name, "blksize")) {
            if (v < 8 || v > g.blksize) return F_PROTOCOL;
            s->blksize = g.granted_blksize = v;
        } else if (!strcasecmp(name, "windowsize") && g.window) {
            if (v < 1 || v > g.window) return F_PROTOCOL;
            s->window = g.granted_window = v;
        } else if (!strcasecmp(name, "tsize")) {
            if (v != g.file_size) return F_MISMATCH;
        } else {
            return F_PROTOCOL;
        }
        name = value + strlen(value) + 1;
    }
    return GO_ON;
}

/* One datagram for session s: 0 when the transfer is done, a failure kind, GO_ON to read
 * the next datagram, or WAIT when we just ACKed a whole window: the server has nothing to
 * send until it reads that ACK, so reading now would only cost an empty recvfrom(). */
static int on_packet(struct session *s, const unsigned char *p, size_t len, double t) {
    if (len < 4) return F_PROTOCOL;
    unsigned op = p[0] << 8 | p[1];
    uint16_t block = p[2] << 8 | p[3];
    if (op == OP_ERROR) return F_ERROR;
    if (op == OP_OACK) {
        if (s->blocks) return GO_ON; /* a late duplicate */
        /* A repeated OACK means the server did not get our ACK 0: answer it again. */
        int fail = parse_oack(s, p + 2, len - 2);
        if (fail >= 0) return fail;
        s->deadline = t + g.timeout;
        send_ack(s, 0);
        return WAIT;
    }
    if (op != OP_DATA) return F_PROTOCOL;
    size_t n = len - 4;
    if (block != s->next) {
        /* A gap (a lost block in a window) or a duplicate (our ACK was lost, or the
         * server timed out early): ACK the last block we hold in order, once per
         * episode, so the sender restarts from there without an ACK storm. */
        g.out_of_order++;
        if (!s->resynced) {
            s->resynced = 1;
            send_ack(s, s->next - 1);
        }
        return GO_ON;
    }
    if (n > s->blksize) return F_PROTOCOL;
    uint64_t offset = s->blocks * s->blksize;
    if (offset + n > g.file_size) return F_MISMATCH;
    if (n && (pread(g.file_fd, filebuf, n, offset) != (ssize_t)n || memcmp(filebuf, p + 4, n)))
        return F_MISMATCH;
    s->blocks++;
    s->next++; /* uint16_t: 65535 rolls over to 0, as servers do */
    s->in_window++;
    s->resynced = 0;
    s->tries = 0;
    s->deadline = t + g.timeout;
    if (n < s->blksize) { /* a short block ends the transfer */
        send_ack(s, block);
        return offset + n == g.file_size ? 0 : F_MISMATCH;
    }
    if (s->in_window < s->window) return GO_ON;
    send_ack(s, block); /* RFC 7440: ACK the last block of each window */
    return WAIT;
}

static void on_readable(struct session *s, double t) {
    for (;;) {
        struct sockaddr_storage from;
        socklen_t from_len = sizeof from;
        ssize_t len = recvfrom(s->fd, rxbuf, sizeof rxbuf, 0, (struct sockaddr *)&from, &from_len);
        if (len < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            finish(s, F_SOCKET, t); /* e.g. ECONNREFUSED: the server's port is gone */
            return;
        }
        if (!s->have_peer) {
            /* The first answer names the server's TID (RFC 1350, section 4); connect()
             * so the kernel drops datagrams from any other port from now on. */
            if (connect(s->fd, (struct sockaddr *)&from, from_len) < 0) die("connect() failed");
            s->have_peer = 1;
        }
        int r = on_packet(s, rxbuf, len, t);
        if (r == WAIT) return; /* level-triggered epoll reports anything still queued */
        if (r >= 0) {
            finish(s, r == 0 ? -1 : r, t);
            return; /* the slot may hold a new transfer now: its socket waits for epoll */
        }
    }
}

/* Called every SCAN_EVERY ms: a linear scan is cheaper than a timer heap for a few
 * hundred sessions, and timeouts are rare on loopback. */
static void check_timeouts(double t) {
    for (unsigned i = 0; i < g.sessions; i++) {
        struct session *s = &g.s[i];
        if (s->fd < 0 || t < s->deadline) continue;
        if (++s->tries > (int)g.retries) {
            finish(s, F_TIMEOUT, t);
            continue;
        }
        g.retransmits++;
        s->deadline = t + g.timeout;
        if (!s->have_peer)
            sendto(s->fd, g.rrq, g.rrq_len, 0, (struct sockaddr *)&g.server, g.server_len);
        else
            send_ack(s, s->next - 1); /* RFC 7440: ACK the last block received in order */
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double percentile(double q) {
    if (!g.completed) return 0;
    long i = (long)(q * (g.completed - 1) + 0.5);
    return g.latency[i] * 1e3;
}

static void report(double wall) {
    struct rusage ru;
    long failed = 0;
    getrusage(RUSAGE_SELF, &ru);
    qsort(g.latency, g.completed, sizeof *g.latency, cmp_double);
    for (int k = 0; k < F_KINDS; k++) failed += g.failed[k];
    printf("{\"completed\": %ld, \"failed\": %ld, \"failed_by_kind\": {", g.completed, failed);
    for (int k = 0; k < F_KINDS; k++)
        printf("%s\"%s\": %ld", k ? ", " : "", fail_names[k], g.failed[k]);
    printf("}, \"bytes\": %llu, \"wall_s\": %.6f, \"mb_per_s\": %.3f, \"transfers_per_s\": %.1f, "
           "\"latency_ms\": {\"p50\": %.3f, \"p99\": %.3f}, \"retransmits\": %ld, "
           "\"out_of_order\": %ld, \"granted\": {\"blksize\": %u, \"windowsize\": %u}, "
           "\"cpu_user_s\": %.6f, \"cpu_sys_s\": %.6f}\n",
           (unsigned long long)g.bytes, wall, g.bytes / wall / 1e6, g.completed / wall,
           percentile(0.5), percentile(0.99), g.retransmits, g.out_of_order, g.granted_blksize,
           g.granted_window, ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
}

static void usage(void) {
    die("usage: tftpbench -p PORT -r ROOT -f FILE [-s ADDR] [-c SESSIONS] [-n TOTAL | -d SECONDS]"
        " [-b BLKSIZE] [-w WINDOWSIZE] [-t TIMEOUT_MS] [-R RETRIES] [-m MAX_TIME]");
}

int main(int argc, char **argv) {
    static const struct option longopts[] = {
        {"server", 1, 0, 's'}, {"port", 1, 0, 'p'}, {"root", 1, 0, 'r'},
        {"file", 1, 0, 'f'}, {"sessions", 1, 0, 'c'}, {"transfers", 1, 0, 'n'},
        {"duration", 1, 0, 'd'}, {"blksize", 1, 0, 'b'}, {"windowsize", 1, 0, 'w'},
        {"timeout", 1, 0, 't'}, {"retries", 1, 0, 'R'}, {"max-time", 1, 0, 'm'}, {0}};
    const char *host = "127.0.0.1", *root = NULL;
    int port = 0, opt;
    g.sessions = 1, g.blksize = 512, g.retries = 5, g.total = -1;
    g.timeout = 1.0, g.max_time = 60;
    while ((opt = getopt_long(argc, argv, "s:p:r:f:c:n:d:b:w:t:R:m:", longopts, NULL)) != -1) {
        switch (opt) {
        case 's': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'r': root = optarg; break;
        case 'f': g.file = optarg; break;
        case 'c': g.sessions = atoi(optarg); break;
        case 'n': g.total = atol(optarg); break;
        case 'd': g.duration = atof(optarg); break;
        case 'b': g.blksize = atoi(optarg); break;
        case 'w': g.window = atoi(optarg); break;
        case 't': g.timeout = atoi(optarg) / 1e3; break;
        case 'R': g.retries = atoi(optarg); break;
        case 'm': g.max_time = atof(optarg); break;
        default: usage();
        }
    }
    if (port <= 0 || port > 65535 || !root || !g.file || optind != argc) usage();
    if (g.sessions < 1 || g.total == 0 || g.blksize < 8 || g.blksize > MAX_BLKSIZE ||
        g.window > 65535 || g.timeout <= 0 || g.max_time <= 0 || strlen(g.file) > 255)
        die("option out of range");
    if (g.total < 0 && g.duration <= 0) g.total = g.sessions; /* default: one transfer each */
    parse_server(host, port);
    build_rrq();

    int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) die("cannot open --root");
    g.file_fd = openat(root_fd, g.file, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (g.file_fd < 0 || fstat(g.file_fd, &st) < 0) die("cannot open the file under --root");
    g.file_size = st.st_size;
    /* Raise the descriptor limit: one socket per session. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < g.sessions + 64) {
        rl.rlim_cur = rl.rlim_max < g.sessions + 64 ? rl.rlim_max : g.sessions + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    g.ep = epoll_create1(EPOLL_CLOEXEC);
    g.s = calloc(g.sessions, sizeof *g.s);
    if (g.ep < 0 || !g.s) die("setup failed");
    g.t0 = now();
    for (unsigned i = 0; i < g.sessions; i++) {
        g.s[i].fd = -1;
        if (may_start(g.t0)) start(&g.s[i], g.t0);
    }
    struct epoll_event evs[256];
    double t = g.t0, next_scan = g.t0 + SCAN_EVERY / 1e3;
    while (g.active) {
        int n = epoll_wait(g.ep, evs, 256, SCAN_EVERY);
        t = now();
        for (int i = 0; i < n; i++) {
            struct session *s = evs[i].data.ptr;
            if (s->fd >= 0) on_readable(s, t);
        }
        if (t >= next_scan) {
            check_timeouts(t);
            next_scan = t + SCAN_EVERY / 1e3;
        }
        if (t - g.t0 >= g.max_time) /* --max-time: stop, count what is still running */
            for (unsigned i = 0; i < g.sessions; i++)
                if (g.s[i].fd >= 0) finish(&g.s[i], F_UNFINISHED, t);
    }
    report(t - g.t0);
    return 0;
}
