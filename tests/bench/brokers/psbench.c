/*
 * psbench.c - pub/sub fan-out load tool for Redis (RESP2), MQTT 3.1.1 QoS 0
 * (mosquitto) and core NATS, over plain POSIX TCP sockets to 127.0.0.1 only.
 *
 * One process: main thread = 1 publisher connection; a second thread drives
 * K subscriber connections with epoll (one reader thread for all K sockets,
 * the cheapest way to load a 2-core box).  Every payload is a ~200-byte
 * JSON-RPC notification carrying "seq" (0..n-1) and "ts" (CLOCK_MONOTONIC ns
 * taken just before the publisher's write()).  Subscribers count messages,
 * seq gaps (= drops) and disconnects.
 *
 * Modes
 *   tput (default): publish n messages as fast as possible, batched into
 *        <=64 KiB writes.  With -w W the publisher never gets more than W
 *        messages ahead of the slowest live subscriber (closed loop);
 *        -w 0 = open loop "blast".
 *        Reports delivered msgs/s over [first publish, last receive of last
 *        subscriber].
 *   lat: publish at a fixed rate (-r msgs/s) for -d seconds, one write()
 *        per message, and report publish->receive latency percentiles
 *        (first 10% of messages, at most 1000, are discarded as warm-up).
 *
 * -P direct: no broker at all; the publisher thread writes the NDJSON lines
 * itself to K accepted loopback TCP sockets (the floor for any broker, and
 * the wire format our daemon will use).
 *
 * Bounded: hard deadline -T seconds (default 60) plus alarm() as a
 * backstop, so the program always exits by itself.
 *
 * -P trainbus (added for trainbus, tests/bench/brokers/): the publisher is
 * tb_pub, a child process that embeds the trainbus server and fires
 * train_batch_end hooks (see tb_pub.c); subscribers read the server's hello,
 * send auth (observer, no token on loopback) and subscribe to
 * train_batch_end of run r1, and take the sequence number and the timestamp
 * from the event's logs ("i" and "t_ns"). broker_cpu is then the whole
 * tb_pub process: the server's loop thread and the trainer thread that
 * publishes. With -p PORT instead, it connects to a running trainbusd (idle
 * mode only).
 *
 * -S DIR (added, trainbus only): TLS. tb_pub's server gets DIR/server.pem and
 * DIR/server.key (tests/tls/make_certs.sh makes them), and every subscriber
 * connects with OpenSSL, verifying the server against DIR/ca.pem, and reads
 * through SSL_read: what TLS costs per delivery (the server's record
 * encryption, the subscriber's decryption) against the same run in
 * plaintext (run_tls.sh).
 *
 * -m idle (added): connect K subscribers, wait, and report the broker's
 * VmRSS (from /proc/BROKER_PID/status) before and after: memory per idle
 * subscriber.
 *
 * Provenance: copied from /work/shared/bench/brokers/psbench.c (the team's
 * reference load tool); the trainbus and idle modes are the only changes.
 *
 * Build: cc -O2 -pthread -o psbench psbench.c
 * Usage: psbench -P redis|mqtt|nats|direct -p PORT [-k K] [-n N] [-w W]
 *                [-m tput|lat] [-r RATE] [-d SECS] [-s PAYLOAD] [-b BROKER_PID]
 *                [-T DEADLINE_S] [-t TAG]
 * Output: one line of key=value pairs on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { P_REDIS, P_MQTT, P_NATS, P_DIRECT, P_TRAINBUS };
enum { FR_NONE, FR_MSG, FR_SUBACK, FR_CONNACK, FR_PING, FR_PONG, FR_INFO, FR_OK, FR_ERR, FR_INT, FR_OTHER };

static int proto = -1, port = 0, K = 1, lat_mode = 0, idle_mode = 0, psize = 200, broker_pid = 0;
static size_t sub_bufcap = 1u << 20;
static const char *tb_pub_path = "./tb_pub";
static const char *tls_dir;     /* -S: TLS with the certificates in this folder */
static SSL_CTX *tls_ctx;
static SSL *wf_ssl;             /* the connection wait_frame reads, when TLS */
static pid_t tb_child = -1;
static FILE *tb_to, *tb_from;   /* tb_pub's stdin and stdout */
static uint64_t tb_dropped;     /* "dropped" notifications seen */
/* -w with trainbus: the slowest subscriber's progress, shared with tb_pub
 * through a memfd, so that it stays at most W events ahead as psbench's own
 * publisher does. */
static _Atomic uint64_t *tb_shm;
static int tb_shm_fd = -1;
static uint64_t N = 200000, window = 0;
static double rate = 10000, dur = 5, deadline_s = 60;
static const char *tag = "";
static const char *chan_redis = "events.r1", *chan_nats = "events.r1", *chan_mqtt = "events/r1";
static const char *chan;

#define SUB_BUFCAP (1u << 20)
#define PUB_BATCH  (64u << 10)

struct sub {
    int fd;
    SSL *ssl;               /* -S: the TLS session over fd */
    char *buf;
    size_t len;
    uint64_t next_seq;      /* highest seq seen + 1 */
    _Atomic uint64_t rcvd;  /* messages received */
    _Atomic uint64_t prog;  /* next_seq, published for the flow-control window */
    uint64_t lost, dup;
    uint64_t last_rx_ns;
    int done, disc;
};

static struct sub *subs;
static int *direct_fds;   /* P_DIRECT: server side of each subscriber connection */
static _Atomic int pub_done;
static uint64_t pub_start_ns, pub_end_ns, hard_deadline_ns;
static uint64_t *lat_ns;   /* lat mode samples */
static size_t lat_cnt, lat_cap;
static uint64_t warmup_seq;
static long long redis_replies_sum;
static _Atomic uint64_t nsent;
static char pub_rbuf[1u << 20];

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *m)
{
    fprintf(stderr, "psbench: %s: %s\n", m, errno ? strerror(errno) : "");
    exit(2);
}

/* ---------------------------------------------------------------- sockets */

static int connect_lo(int p)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = { 0 };
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)p);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1, never anything else */
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect 127.0.0.1");
    return fd;
}

static void set_nonblock(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static void write_all_blocking(int fd, const void *b, size_t n)
{
    const char *p = b;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        p += w;
        n -= (size_t)w;
    }
}

/* ------------------------------------------------------------ frame parse */
/* Each returns bytes consumed (>0), 0 if incomplete, -1 on protocol error. */

static long resp_frame(const char *b, size_t n, int *ft, const char **pl, size_t *pll, long long *iv)
{
    if (n < 3) return 0;
    const char *e = memchr(b, '\n', n);
    if (!e) return 0;
    size_t l1 = (size_t)(e - b) + 1;
    switch (b[0]) {
    case '+': *ft = FR_OK; return (long)l1;
    case '-': *ft = FR_ERR; return (long)l1;
    case ':': *ft = FR_INT; *iv = strtoll(b + 1, NULL, 10); return (long)l1;
    case '*': {
        long cnt = strtol(b + 1, NULL, 10);
        size_t off = l1;
        const char *kind = NULL, *last = NULL;
        size_t kindlen = 0, lastlen = 0;
        for (long i = 0; i < cnt; i++) {
            if (off >= n) return 0;
            const char *q = b + off;
            const char *e2 = memchr(q, '\n', n - off);
            if (!e2) return 0;
            size_t hl = (size_t)(e2 - q) + 1;
            if (q[0] == '$') {
                long bl = strtol(q + 1, NULL, 10);
                if (bl < 0) { off += hl; continue; }
                if (off + hl + (size_t)bl + 2 > n) return 0;
                const char *d = q + hl;
                if (i == 0) { kind = d; kindlen = (size_t)bl; }
                last = d;
                lastlen = (size_t)bl;
                off += hl + (size_t)bl + 2;
            } else if (q[0] == ':') {
                off += hl;
            } else {
                return -1;
            }
        }
        if (kind && kindlen == 7 && !memcmp(kind, "message", 7)) {
            *ft = FR_MSG; *pl = last; *pll = lastlen;
        } else if (kind && kindlen == 9 && !memcmp(kind, "subscribe", 9)) {
            *ft = FR_SUBACK;
        } else {
            *ft = FR_OTHER;
        }
        return (long)off;
    }
    default:
        return -1;
    }
}

static long mqtt_frame(const char *b, size_t n, int *ft, const char **pl, size_t *pll)
{
    if (n < 2) return 0;
    unsigned char h = (unsigned char)b[0];
    size_t rl = 0, mul = 1, i = 1;
    for (;;) {
        if (i >= n) return 0;
        unsigned char c = (unsigned char)b[i++];
        rl += (c & 127u) * mul;
        if (!(c & 128u)) break;
        mul *= 128;
        if (i > 4) return -1;
    }
    if (i + rl > n) return 0;
    const unsigned char *body = (const unsigned char *)b + i;
    switch (h >> 4) {
    case 2: *ft = (rl >= 2 && body[1] != 0) ? FR_ERR : FR_CONNACK; break;
    case 3: {
        size_t tl = ((size_t)body[0] << 8) | body[1];
        size_t off = 2 + tl + (((h >> 1) & 3) ? 2 : 0);
        if (off > rl) return -1;
        *ft = FR_MSG; *pl = (const char *)body + off; *pll = rl - off;
        break;
    }
    case 9: *ft = (rl >= 3 && body[2] == 0x80) ? FR_ERR : FR_SUBACK; break;
    case 13: *ft = FR_PONG; break;
    default: *ft = FR_OTHER;
    }
    return (long)(i + rl);
}

static long nats_frame(const char *b, size_t n, int *ft, const char **pl, size_t *pll)
{
    const char *e = memchr(b, '\n', n);
    if (!e) return 0;
    size_t l1 = (size_t)(e - b) + 1;
    if (l1 >= 4 && !strncasecmp(b, "MSG ", 4)) {
        const char *p = e - 1;
        if (*p == '\r') p--;
        while (p > b && *p != ' ') p--;
        long bl = strtol(p + 1, NULL, 10);
        if (bl < 0) return -1;
        if (l1 + (size_t)bl + 2 > n) return 0;
        *ft = FR_MSG; *pl = b + l1; *pll = (size_t)bl;
        return (long)(l1 + (size_t)bl + 2);
    }
    if (!strncasecmp(b, "PING", 4)) *ft = FR_PING;
    else if (!strncasecmp(b, "PONG", 4)) *ft = FR_PONG;
    else if (!strncasecmp(b, "INFO", 4)) *ft = FR_INFO;
    else if (!strncasecmp(b, "+OK", 3)) *ft = FR_OK;
    else if (!strncasecmp(b, "-ERR", 4)) { *ft = FR_ERR; fprintf(stderr, "nats: %.*s", (int)l1, b); }
    else *ft = FR_OTHER;
    return (long)l1;
}

/* direct: NDJSON lines, no broker (baseline / what our daemon will emit) */
static long ndjson_frame(const char *b, size_t n, int *ft, const char **pl, size_t *pll)
{
    const char *e = memchr(b, '\n', n);
    if (!e) return 0;
    *ft = FR_MSG; *pl = b; *pll = (size_t)(e - b) + 1;
    return (long)*pll;
}

/* trainbus: NDJSON JSON-RPC lines; classify by their method or id. */
static long tbus_frame(const char *b, size_t n, int *ft, const char **pl, size_t *pll)
{
    const char *e = memchr(b, '\n', n);
    if (!e) return 0;
    size_t l = (size_t)(e - b) + 1;
    *pl = b; *pll = l;
    static const char ev[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\"";
    if (l > sizeof ev && !memcmp(b, ev, sizeof ev - 1)) *ft = FR_MSG;
    else if (memmem(b, l, "\"method\":\"hello\"", 16)) *ft = FR_INFO;
    else if (memmem(b, l, "\"error\":", 8)) { *ft = FR_ERR; fprintf(stderr, "trainbus: %.*s", (int)l, b); }
    else if (memmem(b, l, "\"result\":", 9)) *ft = FR_OK;
    else if (memmem(b, l, "\"method\":\"dropped\"", 18)) { *ft = FR_OTHER; tb_dropped++; }
    else *ft = FR_OTHER;
    return (long)l;
}

static long parse_frame(const char *b, size_t n, int *ft, const char **pl, size_t *pll, long long *iv)
{
    *ft = FR_NONE;
    if (proto == P_TRAINBUS) return tbus_frame(b, n, ft, pl, pll);
    switch (proto) {
    case P_REDIS: return resp_frame(b, n, ft, pl, pll, iv);
    case P_MQTT:  return mqtt_frame(b, n, ft, pl, pll);
    case P_NATS:  return nats_frame(b, n, ft, pl, pll);
    default:      return ndjson_frame(b, n, ft, pl, pll);
    }
}

/* Blocking read until a frame of type `want` arrives (handshake phase). */
static void wait_frame(int fd, char *buf, size_t *len, int want, const char *what)
{
    uint64_t t_end = now_ns() + 5000000000ull;
    for (;;) {
        size_t off = 0;
        for (;;) {
            int ft; const char *pl; size_t pll; long long iv;
            long c = parse_frame(buf + off, *len - off, &ft, &pl, &pll, &iv);
            if (c < 0) { errno = 0; die("protocol error in handshake"); }
            if (c == 0) break;
            off += (size_t)c;
            if (ft == FR_ERR) { errno = 0; fprintf(stderr, "psbench: %s refused\n", what); exit(2); }
            if (ft == FR_PING && proto == P_NATS) write_all_blocking(fd, "PONG\r\n", 6);
            if (ft == want) {
                memmove(buf, buf + off, *len - off);
                *len -= off;
                return;
            }
        }
        memmove(buf, buf + off, *len - off);
        *len -= off;
        if (now_ns() > t_end) { errno = 0; die(what); }
        size_t room = (buf == pub_rbuf ? SUB_BUFCAP : sub_bufcap) - *len;
        ssize_t r = wf_ssl ? SSL_read(wf_ssl, buf + *len, (int)room) : read(fd, buf + *len, room);
        if (r <= 0) die(what);
        *len += (size_t)r;
    }
}

/* ------------------------------------------------------------ handshakes */

static size_t mqtt_varint(unsigned char *o, size_t v)
{
    size_t i = 0;
    do {
        unsigned char c = v % 128;
        v /= 128;
        if (v) c |= 128;
        o[i++] = c;
    } while (v);
    return i;
}

static void mqtt_connect(int fd, char *buf, size_t *len, const char *cid)
{
    unsigned char pkt[128], body[128];
    size_t b = 0, cl = strlen(cid);
    memcpy(body + b, "\x00\x04MQTT\x04\x02", 8); b += 8;   /* level 4, clean session */
    body[b++] = 0x01; body[b++] = 0x2c;                     /* keepalive 300 s */
    body[b++] = (unsigned char)(cl >> 8); body[b++] = (unsigned char)cl;
    memcpy(body + b, cid, cl); b += cl;
    size_t p = 0;
    pkt[p++] = 0x10;
    p += mqtt_varint(pkt + p, b);
    memcpy(pkt + p, body, b); p += b;
    write_all_blocking(fd, pkt, p);
    wait_frame(fd, buf, len, FR_CONNACK, "mqtt CONNACK");
}

static void nats_connect(int fd, char *buf, size_t *len, const char *name)
{
    wait_frame(fd, buf, len, FR_INFO, "nats INFO");
    char c[512];
    int n = snprintf(c, sizeof c,
                     "CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,"
                     "\"name\":\"%s\",\"lang\":\"c\",\"version\":\"0.1\",\"protocol\":1,\"echo\":false}\r\n",
                     name);
    write_all_blocking(fd, c, (size_t)n);
}

static int direct_lfd = -1;

static void sub_handshake(struct sub *s, int idx)
{
    if (proto == P_DIRECT) {
        if (direct_lfd < 0) {
            struct sockaddr_in a = { 0 };
            socklen_t al = sizeof a;
            a.sin_family = AF_INET;
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            direct_lfd = socket(AF_INET, SOCK_STREAM, 0);
            if (direct_lfd < 0 || bind(direct_lfd, (struct sockaddr *)&a, sizeof a) < 0 ||
                listen(direct_lfd, 64) < 0 || getsockname(direct_lfd, (struct sockaddr *)&a, &al) < 0)
                die("direct listen");
            port = ntohs(a.sin_port);
        }
        s->fd = connect_lo(port);
        s->buf = malloc(SUB_BUFCAP);
        s->len = 0;
        int fd = accept(direct_lfd, NULL, NULL), one = 1;
        if (fd < 0 || !s->buf) die("direct accept");
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        set_nonblock(fd);
        direct_fds[idx] = fd;
        set_nonblock(s->fd);
        return;
    }
    char cid[64];
    snprintf(cid, sizeof cid, "psb-%d-s%d", (int)getpid(), idx);
    s->fd = connect_lo(port);
    s->buf = malloc(sub_bufcap);
    s->len = 0;
    if (!s->buf) die("malloc");
    char m[256];
    int n;
    switch (proto) {
    case P_REDIS:
        n = snprintf(m, sizeof m, "*2\r\n$9\r\nSUBSCRIBE\r\n$%zu\r\n%s\r\n", strlen(chan), chan);
        write_all_blocking(s->fd, m, (size_t)n);
        wait_frame(s->fd, s->buf, &s->len, FR_SUBACK, "redis subscribe");
        break;
    case P_MQTT: {
        mqtt_connect(s->fd, s->buf, &s->len, cid);
        unsigned char pk[128];
        size_t tl = strlen(chan), p = 0, rl = 2 + 2 + tl + 1;
        pk[p++] = 0x82;
        p += mqtt_varint(pk + p, rl);
        pk[p++] = 0; pk[p++] = 1;                        /* packet id 1 */
        pk[p++] = (unsigned char)(tl >> 8); pk[p++] = (unsigned char)tl;
        memcpy(pk + p, chan, tl); p += tl;
        pk[p++] = 0;                                       /* requested QoS 0 */
        write_all_blocking(s->fd, pk, p);
        wait_frame(s->fd, s->buf, &s->len, FR_SUBACK, "mqtt SUBACK");
        break;
    }
    case P_TRAINBUS: {
        static const char req[] =
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"auth\",\"params\":{\"role\":\"observer\",\"client\":\"psbench\"}}\n"
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"subscribe\",\"params\":{\"runs\":[\"r1\"],\"events\":[\"train_batch_end\"]}}\n";
        if (tls_ctx) {
            s->ssl = SSL_new(tls_ctx);
            if (!s->ssl || !SSL_set_fd(s->ssl, s->fd) || !SSL_set1_host(s->ssl, "127.0.0.1") ||
                SSL_connect(s->ssl) != 1) {
                ERR_print_errors_fp(stderr);
                errno = 0;
                die("TLS handshake");
            }
            wf_ssl = s->ssl;
        }
        wait_frame(s->fd, s->buf, &s->len, FR_INFO, "trainbus hello");
        if (s->ssl) {
            if (SSL_write(s->ssl, req, (int)(sizeof req - 1)) != (int)(sizeof req - 1)) die("SSL_write");
        } else {
            write_all_blocking(s->fd, req, sizeof req - 1);
        }
        wait_frame(s->fd, s->buf, &s->len, FR_OK, "trainbus auth");
        wait_frame(s->fd, s->buf, &s->len, FR_OK, "trainbus subscribe");
        wf_ssl = NULL;
        break;
    }
    case P_NATS:
        nats_connect(s->fd, s->buf, &s->len, cid);
        n = snprintf(m, sizeof m, "SUB %s %d\r\nPING\r\n", chan, idx + 1);
        write_all_blocking(s->fd, m, (size_t)n);
        wait_frame(s->fd, s->buf, &s->len, FR_PONG, "nats SUB/PONG");
        break;
    }
    set_nonblock(s->fd);
}

static int pub_handshake(char *buf, size_t *len)
{
    if (proto == P_DIRECT || proto == P_TRAINBUS) return -1;
    int fd = connect_lo(port);
    char cid[64];
    snprintf(cid, sizeof cid, "psb-%d-pub", (int)getpid());
    if (proto == P_REDIS) {
        write_all_blocking(fd, "*1\r\n$4\r\nPING\r\n", 14);
        wait_frame(fd, buf, len, FR_OK, "redis PING");
    } else if (proto == P_MQTT) {
        mqtt_connect(fd, buf, len, cid);
    } else {
        nats_connect(fd, buf, len, cid);
        write_all_blocking(fd, "PING\r\n", 6);
        wait_frame(fd, buf, len, FR_PONG, "nats PONG");
    }
    set_nonblock(fd);
    return fd;
}

/* --------------------------------------------------------------- payload */

static const char PFX[] = "{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{\"run\":\"r1\",\"seq\":";

/* Exactly psize bytes: JSON object, padded with spaces before the final '}',
 * terminated by '\n' (NDJSON line). */
static void build_payload(char *o, uint64_t seq, uint64_t ts)
{
    int n = snprintf(o, (size_t)psize,
                     "%s%" PRIu64 ",\"ts\":%" PRIu64 ",\"event\":\"batch_end\",\"epoch\":3,\"batch\":117,"
                     "\"logs\":{\"loss\":0.312345,\"accuracy\":0.891234,\"lr\":0.001}}",
                     PFX, seq, ts);
    if (n < 0 || n > psize - 2) { errno = 0; die("payload size too small"); }
    memset(o + n, ' ', (size_t)(psize - 2 - n));
    o[psize - 2] = '}';
    o[psize - 1] = '\n';
}

static char pub_hdr[64];
static size_t pub_hdr_len, pub_trl_len;

static void build_pub_header(void)
{
    size_t cl = strlen(chan);
    switch (proto) {
    case P_REDIS:
        pub_hdr_len = (size_t)snprintf(pub_hdr, sizeof pub_hdr, "*3\r\n$7\r\nPUBLISH\r\n$%zu\r\n%s\r\n$%d\r\n", cl, chan, psize);
        pub_trl_len = 2;
        break;
    case P_MQTT: {
        size_t p = 0;
        pub_hdr[p++] = 0x30;                                   /* PUBLISH, QoS 0, no retain */
        p += mqtt_varint((unsigned char *)pub_hdr + p, 2 + cl + (size_t)psize);
        pub_hdr[p++] = (char)(cl >> 8); pub_hdr[p++] = (char)cl;
        memcpy(pub_hdr + p, chan, cl); p += cl;
        pub_hdr_len = p;
        pub_trl_len = 0;
        break;
    }
    case P_NATS:
        pub_hdr_len = (size_t)snprintf(pub_hdr, sizeof pub_hdr, "PUB %s %d\r\n", chan, psize);
        pub_trl_len = 2;
        break;
    default:
        pub_hdr_len = pub_trl_len = 0;
    }
}

static size_t append_pub(char *o, uint64_t seq)
{
    memcpy(o, pub_hdr, pub_hdr_len);
    build_payload(o + pub_hdr_len, seq, now_ns());
    if (pub_trl_len) memcpy(o + pub_hdr_len + (size_t)psize, "\r\n", 2);
    return pub_hdr_len + (size_t)psize + pub_trl_len;
}

/* ------------------------------------------------------------ subscribers */

static inline uint64_t parse_u64(const char **pp)
{
    const char *p = *pp;
    uint64_t v = 0;
    while (*p >= '0' && *p <= '9') v = v * 10 + (uint64_t)(*p++ - '0');
    *pp = p;
    return v;
}

static uint64_t min_rcvd(void);

static void on_msg(struct sub *s, const char *pl, size_t pll, uint64_t t_rx)
{
    uint64_t seq, ts;
    if (proto == P_TRAINBUS) {
        /* ..."logs":{...,"i":SEQ,"t_ns":TS}}} */
        const char *p = memmem(pl, pll, "\"i\":", 4);
        if (!p) return;
        p += 4;
        seq = parse_u64(&p);
        if (strncmp(p, ",\"t_ns\":", 8)) return;
        p += 8;
        ts = parse_u64(&p);
    } else {
    if (pll < sizeof PFX + 8 || memcmp(pl, PFX, sizeof PFX - 1)) return;
    const char *p = pl + sizeof PFX - 1;
    seq = parse_u64(&p);
    if (strncmp(p, ",\"ts\":", 6)) return;
    p += 6;
    ts = parse_u64(&p);
    }
    if (seq == s->next_seq) {
        s->next_seq = seq + 1;
    } else if (seq > s->next_seq) {
        s->lost += seq - s->next_seq;
        s->next_seq = seq + 1;
    } else {
        s->dup++;
    }
    atomic_store_explicit(&s->rcvd, atomic_load_explicit(&s->rcvd, memory_order_relaxed) + 1, memory_order_relaxed);
    atomic_store_explicit(&s->prog, s->next_seq, memory_order_release);
    if (lat_mode && seq >= warmup_seq && lat_cnt < lat_cap) lat_ns[lat_cnt++] = t_rx - ts;
}

static void *sub_thread(void *arg)
{
    (void)arg;
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll");
    for (int i = 0; i < K; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, subs[i].fd, &ev);
    }
    uint64_t last_any = now_ns();
    const uint64_t idle_ns = 1000000000ull;
    struct epoll_event evs[64];
    for (;;) {
        int live = 0;
        for (int i = 0; i < K; i++) live += !subs[i].done;
        if (!live) break;
        uint64_t t = now_ns();
        if (t > hard_deadline_ns) break;
        if (atomic_load(&pub_done) && t - last_any > idle_ns && t - pub_end_ns > idle_ns) break;
        int ne = epoll_wait(ep, evs, 64, 20);
        for (int e = 0; e < ne; e++) {
            struct sub *s = &subs[evs[e].data.u32];
            if (s->done) continue;
          again:;
            ssize_t r;
            if (s->ssl) {
                /* Records are decrypted one at a time: read until OpenSSL has
                 * nothing left (epoll cannot see what it holds). */
                r = SSL_read(s->ssl, s->buf + s->len, (int)(sub_bufcap - s->len));
                if (r <= 0) {
                    int se = SSL_get_error(s->ssl, (int)r);
                    if (se == SSL_ERROR_WANT_READ) { r = -1; errno = EAGAIN; }
                    else { r = se == SSL_ERROR_ZERO_RETURN ? 0 : -1; errno = se == SSL_ERROR_ZERO_RETURN ? 0 : EPROTO; }
                }
            } else {
                r = read(s->fd, s->buf + s->len, sub_bufcap - s->len);
            }
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                s->disc = 1;
                s->done = 1;
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                continue;
            }
            if (r < 0) continue;
            uint64_t trx = now_ns();
            s->len += (size_t)r;
            s->last_rx_ns = trx;
            last_any = trx;
            size_t off = 0;
            for (;;) {
                int ft; const char *pl; size_t pll; long long iv;
                long c = parse_frame(s->buf + off, s->len - off, &ft, &pl, &pll, &iv);
                if (c == 0) break;
                if (c < 0) { fprintf(stderr, "psbench: sub protocol error\n"); s->disc = s->done = 1; break; }
                off += (size_t)c;
                if (ft == FR_MSG) on_msg(s, pl, pll, trx);
                else if (ft == FR_PING && proto == P_NATS) { if (write(s->fd, "PONG\r\n", 6) < 0) {} }
            }
            memmove(s->buf, s->buf + off, s->len - off);
            s->len -= off;
            if (s->next_seq >= nsent && nsent) s->done = 1;
            if (s->ssl && !s->done && s->len < sub_bufcap) goto again;
        }
        if (tb_shm) atomic_store(tb_shm, min_rcvd());
    }
    close(ep);
    return NULL;
}

/* -------------------------------------------------------------- publisher */

static size_t pub_rlen;
static int pub_pong_due;   /* NATS server PING seen: answer at a message boundary */

static void pub_drain(int fd)
{
    if (fd < 0) return;
    for (;;) {
        ssize_t r = read(fd, pub_rbuf + pub_rlen, sizeof pub_rbuf - pub_rlen);
        if (r <= 0) {
            if (r == 0) { errno = 0; die("publisher connection closed by broker"); }
            if (errno == EAGAIN || errno == EINTR) return;
            die("publisher read");
        }
        pub_rlen += (size_t)r;
        size_t off = 0;
        for (;;) {
            int ft; const char *pl; size_t pll; long long iv = 0;
            long c = parse_frame(pub_rbuf + off, pub_rlen - off, &ft, &pl, &pll, &iv);
            if (c <= 0) break;
            off += (size_t)c;
            if (ft == FR_INT) redis_replies_sum += iv;
            else if (ft == FR_PING && proto == P_NATS) pub_pong_due++;
            else if (ft == FR_ERR) fprintf(stderr, "psbench: broker error to publisher\n");
        }
        memmove(pub_rbuf, pub_rbuf + off, pub_rlen - off);
        pub_rlen -= off;
    }
}

static void pub_flush1(int fd, const char *b, size_t n);

/* Write whole messages; b holds only complete frames, so a PONG owed to a
 * NATS server PING can be sent right after without splitting a PUB. */
static void pub_flush(int fd, const char *b, size_t n)
{
    if (proto == P_DIRECT) {        /* the publisher does the fan-out itself */
        for (int i = 0; i < K; i++) pub_flush1(direct_fds[i], b, n);
        return;
    }
    pub_flush1(fd, b, n);
    while (pub_pong_due) {
        pub_pong_due--;
        pub_flush1(fd, "PONG\r\n", 6);
    }
}

static void pub_flush1(int fd, const char *b, size_t n)
{
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w > 0) { b += w; n -= (size_t)w; continue; }
        if (w < 0 && errno != EAGAIN && errno != EINTR) die("publisher write");
        struct pollfd p = { .fd = fd, .events = POLLOUT | POLLIN };
        poll(&p, 1, 50);
        if ((p.revents & POLLIN) && proto != P_DIRECT) pub_drain(fd);
        if (now_ns() > hard_deadline_ns) { errno = 0; die("deadline while publishing"); }
    }
}

static uint64_t min_rcvd(void)
{
    uint64_t m = UINT64_MAX;
    for (int i = 0; i < K; i++) {
        if (subs[i].disc) continue;
        uint64_t r = atomic_load_explicit(&subs[i].prog, memory_order_acquire);
        if (r < m) m = r;
    }
    return m == UINT64_MAX ? 0 : m;
}

/* trainbus: tb_pub publishes; tell it to go and wait for its report. */
static void publisher_tb(void)
{
    char line[256];
    pub_start_ns = now_ns();
    fprintf(tb_to, "go\n");
    fflush(tb_to);
    if (!fgets(line, sizeof line, tb_from)) { errno = 0; die("tb_pub ended early"); }
    unsigned long long t0, t1;
    if (sscanf(line, "done %llu %llu", &t0, &t1) != 2) { errno = 0; die("tb_pub: bad report"); }
    pub_start_ns = t0;
    pub_end_ns = t1;
    atomic_store(&pub_done, 1);
}

/* Starts tb_pub with pipes on its stdin and stdout and reads its port. */
static void spawn_tb_pub(void)
{
    int in[2], out[2];
    if (pipe(in) || pipe(out)) die("pipe");
    char nbuf[32], rbuf[32], wbuf[32] = "0", fbuf[32] = "-1";
    if (window) {
        tb_shm_fd = memfd_create("psbench-window", 0);
        if (tb_shm_fd < 0 || ftruncate(tb_shm_fd, 4096) != 0) die("memfd");
        tb_shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, tb_shm_fd, 0);
        if (tb_shm == MAP_FAILED) die("mmap");
        snprintf(wbuf, sizeof wbuf, "%" PRIu64, window);
        snprintf(fbuf, sizeof fbuf, "%d", tb_shm_fd);
    }
    snprintf(nbuf, sizeof nbuf, "%" PRIu64, lat_mode ? (uint64_t)(rate * dur) : N);
    snprintf(rbuf, sizeof rbuf, "%.0f", lat_mode ? rate : 0.0);
    tb_child = fork();
    if (tb_child < 0) die("fork");
    if (tb_child == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[0]); close(in[1]); close(out[0]); close(out[1]);
        if (tls_dir) {
            char cert[4096], key[4096];
            snprintf(cert, sizeof cert, "%s/server.pem", tls_dir);
            snprintf(key, sizeof key, "%s/server.key", tls_dir);
            execl(tb_pub_path, "tb_pub", "-n", nbuf, "-r", rbuf, "-w", wbuf, "-f", fbuf, "-c", cert,
                  "-k", key, (char *)NULL);
        }
        execl(tb_pub_path, "tb_pub", "-n", nbuf, "-r", rbuf, "-w", wbuf, "-f", fbuf, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    tb_to = fdopen(in[1], "w");
    tb_from = fdopen(out[0], "r");
    char line[256];
    if (!fgets(line, sizeof line, tb_from) || sscanf(line, "port %d", &port) != 1) {
        errno = 0;
        die("tb_pub did not report its port");
    }
    broker_pid = (int)tb_child;
}

static long rss_kb(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}

static void publisher(int fd)
{
    if (proto == P_TRAINBUS) { publisher_tb(); return; }
    static char ob[PUB_BATCH + 4096];
    size_t msz = pub_hdr_len + (size_t)psize + pub_trl_len;
    struct timespec ws = { 0, 20000 };
    pub_start_ns = now_ns();
    if (!lat_mode) {
        uint64_t i = 0;
        while (i < N) {
            size_t ol = 0;
            while (i < N && ol + msz <= PUB_BATCH) {
                if (window && i - min_rcvd() >= window) break;
                ol += append_pub(ob + ol, i);
                i++;
            }
            if (!ol) {           /* window full: wait for the slowest subscriber */
                pub_drain(fd);
                pub_flush(fd, "", 0);
                nanosleep(&ws, NULL);
                if (now_ns() > hard_deadline_ns) break;
                continue;
            }
            pub_flush(fd, ob, ol);
        }
        if (i < N) nsent = i;
    } else {
        uint64_t period = (uint64_t)(1e9 / rate);
        for (uint64_t i = 0; i < N; i++) {
            uint64_t tgt = pub_start_ns + i * period;
            struct timespec ts = { (time_t)(tgt / 1000000000ull), (long)(tgt % 1000000000ull) };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
            size_t ol = append_pub(ob, i);
            pub_flush(fd, ob, ol);
            if ((i & 255) == 0) pub_drain(fd);
            if (now_ns() > hard_deadline_ns) { nsent = i + 1; break; }
        }
    }
    pub_end_ns = now_ns();
    atomic_store(&pub_done, 1);
}

/* ------------------------------------------------------------------ stats */

static double cpu_of_pid(int pid)
{
    if (pid <= 0) return -1;
    char path[64], b[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(b, 1, sizeof b - 1, f);
    fclose(f);
    b[n] = 0;
    char *p = strrchr(b, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* fields after ')': state(3) ... utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* CPU seconds of the process's threads other than its main thread (for
 * tb_pub: the server's loop thread). */
static double cpu_of_other_threads(int pid)
{
    if (pid <= 0) return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    FILE *ls = NULL;
    double sum = 0;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ls %s", path);
    if (!(ls = popen(cmd, "r"))) return -1;
    int tid;
    while (fscanf(ls, "%d", &tid) == 1) {
        if (tid == pid) continue;
        char p2[96], b[1024];
        snprintf(p2, sizeof p2, "/proc/%d/task/%d/stat", pid, tid);
        FILE *f = fopen(p2, "r");
        if (!f) continue;
        size_t n = fread(b, 1, sizeof b - 1, f);
        fclose(f);
        b[n] = 0;
        char *q = strrchr(b, ')');
        unsigned long ut = 0, st = 0;
        if (q && sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            sum += (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    }
    pclose(ls);
    return sum;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double q)
{
    if (!lat_cnt) return -1;
    size_t i = (size_t)(q * (double)(lat_cnt - 1) + 0.5);
    return (double)lat_ns[i] / 1000.0;
}

static void usage(void)
{
    fprintf(stderr, "usage: psbench -P redis|mqtt|nats|direct|trainbus [-p PORT] [-k K] [-n N] [-w W] [-m tput|lat|idle]\n"
                    "               [-r RATE] [-d SECS] [-s PAYLOAD] [-b BROKER_PID] [-T DEADLINE_S] [-t TAG] [-x TB_PUB]\n"
                    "               [-S TLS_DIR]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int c;
    while ((c = getopt(argc, argv, "P:p:k:n:w:m:r:d:s:b:T:t:x:S:")) != -1) {
        switch (c) {
        case 'P':
            if (!strcmp(optarg, "redis")) proto = P_REDIS;
            else if (!strcmp(optarg, "mqtt")) proto = P_MQTT;
            else if (!strcmp(optarg, "nats")) proto = P_NATS;
            else if (!strcmp(optarg, "direct")) proto = P_DIRECT;
            else if (!strcmp(optarg, "trainbus")) proto = P_TRAINBUS;
            else usage();
            break;
        case 'p': port = atoi(optarg); break;
        case 'k': K = atoi(optarg); break;
        case 'n': N = strtoull(optarg, NULL, 10); break;
        case 'w': window = strtoull(optarg, NULL, 10); break;
        case 'm': lat_mode = !strcmp(optarg, "lat"); idle_mode = !strcmp(optarg, "idle"); break;
        case 'x': tb_pub_path = optarg; break;
        case 'S': tls_dir = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 's': psize = atoi(optarg); break;
        case 'b': broker_pid = atoi(optarg); break;
        case 'T': deadline_s = atof(optarg); break;
        case 't': tag = optarg; break;
        default: usage();
        }
    }
    if (proto < 0 || (port <= 0 && proto != P_DIRECT && proto != P_TRAINBUS) || K < 1 || K > (idle_mode ? 20000 : 1000) || psize < 190 || psize > 60000 || rate <= 0) usage();
    if (tls_dir && proto != P_TRAINBUS) usage();
    if (tls_dir) {
        char ca[4096];
        snprintf(ca, sizeof ca, "%s/ca.pem", tls_dir);
        tls_ctx = SSL_CTX_new(TLS_client_method());
        if (!tls_ctx || SSL_CTX_load_verify_locations(tls_ctx, ca, NULL) != 1) { errno = 0; die("TLS CA"); }
        SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    }
    if (deadline_s > 600) deadline_s = 600;
    alarm((unsigned)deadline_s + 15);          /* backstop: SIGALRM terminates */
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL);             /* precise pacing in lat mode */
    chan = proto == P_REDIS ? chan_redis : proto == P_MQTT ? chan_mqtt : chan_nats;
    direct_fds = calloc((size_t)K, sizeof *direct_fds);
    if (lat_mode) {
        N = (uint64_t)(rate * dur);
        warmup_seq = N / 10 < 1000 ? N / 10 : 1000;
        lat_cap = (size_t)N * (size_t)K;
        lat_ns = malloc(lat_cap * sizeof *lat_ns);
        if (!lat_ns) die("malloc");
    }
    nsent = N;
    hard_deadline_ns = now_ns() + (uint64_t)(deadline_s * 1e9);

    if (proto == P_TRAINBUS && port <= 0) spawn_tb_pub();
    if (idle_mode) {
        /* Memory per idle subscriber: connect K, let the broker settle,
         * read its resident size. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
        sub_bufcap = 4096;
        sleep(1);
        long rss0 = rss_kb(broker_pid);
        uint64_t t0 = now_ns();
        subs = calloc((size_t)K, sizeof *subs);
        for (int i = 0; i < K; i++) sub_handshake(&subs[i], i);
        double conn_s = (double)(now_ns() - t0) / 1e9;
        sleep(2);
        long rss1 = rss_kb(broker_pid);
        printf("tag=%s proto=%d mode=idle k=%d connect_s=%.2f rss0_kb=%ld rss_kb=%ld per_sub_bytes=%.0f\n",
               tag[0] ? tag : "-", proto, K, conn_s, rss0, rss1,
               rss0 > 0 && rss1 > 0 ? (double)(rss1 - rss0) * 1024.0 / K : -1.0);
        for (int i = 0; i < K; i++) close(subs[i].fd);
        if (tb_child > 0) { fclose(tb_to); waitpid(tb_child, NULL, 0); }
        return 0;
    }
    subs = calloc((size_t)K, sizeof *subs);
    for (int i = 0; i < K; i++) sub_handshake(&subs[i], i);
    size_t plen = 0;
    int pfd = pub_handshake(pub_rbuf, &plen);
    pub_rlen = plen;
    build_pub_header();

    double bcpu0 = cpu_of_pid(broker_pid), scpu0 = self_cpu();
    double lcpu0 = proto == P_TRAINBUS ? cpu_of_other_threads(broker_pid) : -1;
    pthread_t th;
    pthread_create(&th, NULL, sub_thread, NULL);
    publisher(pfd);
    pthread_join(th, NULL);
    double bcpu1 = cpu_of_pid(broker_pid), scpu1 = self_cpu();
    double lcpu1 = proto == P_TRAINBUS ? cpu_of_other_threads(broker_pid) : -1;
    long tb_rss = tb_child > 0 ? rss_kb(broker_pid) : -1;
    if (tb_child > 0) {
        fprintf(tb_to, "quit\n");
        fclose(tb_to);
        waitpid(tb_child, NULL, 0);
        fclose(tb_from);
    }
    if (proto == P_REDIS) pub_drain(pfd);

    uint64_t delivered = 0, lost = 0, dup = 0, last_rx = 0;
    int disc = 0;
    for (int i = 0; i < K; i++) {
        struct sub *s = &subs[i];
        uint64_t r = atomic_load(&s->rcvd);
        delivered += r - s->dup;
        dup += s->dup;
        lost += nsent - (r - s->dup);   /* gaps, tail loss and disconnects */
        disc += s->disc;
        if (s->last_rx_ns > last_rx) last_rx = s->last_rx_ns;
        close(s->fd);
    }
    if (pfd >= 0) close(pfd);
    if (proto == P_DIRECT) for (int i = 0; i < K; i++) close(direct_fds[i]);
    double secs = last_rx > pub_start_ns ? (double)(last_rx - pub_start_ns) / 1e9 : -1;
    double pub_secs = (double)(pub_end_ns - pub_start_ns) / 1e9;
    double bcpu = (bcpu0 >= 0 && bcpu1 >= 0) ? bcpu1 - bcpu0 : -1;
    const char *pn = proto == P_REDIS ? "redis" : proto == P_MQTT ? "mqtt" : proto == P_NATS ? "nats" : proto == P_TRAINBUS ? "trainbus" : "direct";

    for (int i = 0; i < K; i++) SSL_free(subs[i].ssl);
    printf("tag=%s proto=%s mode=%s k=%d payload=%d sent=%" PRIu64 " expected=%" PRIu64
           " delivered=%" PRIu64 " lost=%" PRIu64 " dup=%" PRIu64 " disc=%d",
           tag[0] ? tag : "-", pn, lat_mode ? "lat" : "tput", K, psize, nsent, nsent * (uint64_t)K,
           delivered, lost, dup, disc);
    if (!lat_mode) {
        printf(" window=%" PRIu64 " secs=%.4f deliv_per_s=%.0f pub_per_s=%.0f", window, secs,
               secs > 0 ? (double)delivered / secs : 0, pub_secs > 0 ? (double)nsent / pub_secs : 0);
    } else {
        qsort(lat_ns, lat_cnt, sizeof *lat_ns, cmp_u64);
        printf(" rate=%.0f actual_rate=%.0f samples=%zu p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f",
               rate, pub_secs > 0 ? (double)nsent / pub_secs : 0, lat_cnt, pct(0.50), pct(0.90), pct(0.99),
               pct(0.999), lat_cnt ? (double)lat_ns[lat_cnt - 1] / 1000.0 : -1);
    }
    printf(" broker_cpu_s=%.2f bench_cpu_s=%.2f", bcpu, scpu1 - scpu0);
    if (bcpu >= 0 && delivered) printf(" broker_cpu_us_per_deliv=%.3f", bcpu * 1e6 / (double)delivered);
    if (proto == P_REDIS) printf(" redis_receivers_sum=%lld", redis_replies_sum);
    if (proto == P_TRAINBUS) {
        printf(" dropped_notices=%" PRIu64 " broker_rss_kb=%ld", tb_dropped, tb_rss);
        if (lcpu0 >= 0 && lcpu1 >= 0 && delivered)
            printf(" loop_cpu_s=%.2f loop_cpu_us_per_deliv=%.3f", lcpu1 - lcpu0,
                   (lcpu1 - lcpu0) * 1e6 / (double)delivered);
    }
    printf("\n");
    return 0;
}
