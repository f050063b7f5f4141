/* fanout_sub: N observers of one training run, in one process, for the
 * bridge benchmark (run_bridge_bench.py). Each observer is its own TCP
 * connection to one of:
 *
 *   nats      nats-server: SUB tb.NS.run.*.evt.> (what trainbus-bridge
 *             publishes; JetStream-stored messages reach core subscribers too)
 *   mqtt      mosquitto: MQTT 3.1.1 SUBSCRIBE tb/NS/run/+/evt/# at QoS 0
 *   trainbus  trainbusd directly: auth as observer, subscribe {"every": N}
 *
 * All connections are served by one epoll loop. For every message the
 * observer reads the event's "time" (the trainer's wall clock when the event
 * fired, microseconds) and records now - time: the latency from the
 * trainer's event to this subscriber. An observer is done when it sees the
 * run's final state event.
 *
 *   fanout_sub MODE PORT N NS EVERY TIMEOUT_S
 *
 * prints "ready" once every connection is subscribed, then at the end one
 * JSON line: connections, done, delivered, delivered/s (over the span from
 * the first delivery to the last), latency p50/p99/max in microseconds. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

typedef enum { M_NATS, M_MQTT, M_TB } mode_t_;

typedef struct conn_s {
  int fd;
  char *buf;
  size_t len, cap;
  int state; /* 0 connecting/handshake, 1 subscribed, 2 done */
} conn_t;

static mode_t_ mode;
static const char *ns;
static long every;
static int n_ready, n_done;
static double *lat;
static size_t n_lat, cap_lat;
static double t_first, t_last;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void send_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n > 0) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) {
        usleep(100);
        continue;
      }
      return;
    }
    c += w;
    n -= (size_t)w;
  }
}

/* One event payload (JSON text, len bytes). */
static void on_event(conn_t *c, const char *p, size_t len) {
  double now = now_s();
  const char *t = memmem(p, len, "\"time\":", 7);
  if (t != NULL) {
    double when = strtod(t + 7, NULL);
    if (n_lat == cap_lat) {
      cap_lat = cap_lat ? cap_lat * 2 : 1 << 20;
      lat = realloc(lat, cap_lat * sizeof *lat);
    }
    lat[n_lat++] = (now - when) * 1e6;
    if (t_first == 0)
      t_first = now;
    t_last = now;
  }
  if (memmem(p, len, "\"event\":\"state\"", 15) != NULL &&
      (memmem(p, len, "\"state\":\"finished\"", 18) ||
       memmem(p, len, "\"state\":\"stopped\"", 17) || memmem(p, len, "\"state\":\"failed\"", 16)) &&
      c->state != 2) {
    c->state = 2;
    n_done++;
  }
}

static void subscribed(conn_t *c) {
  if (c->state == 0) {
    c->state = 1;
    n_ready++;
  }
}

/* Consumes what it can of c->buf; returns bytes used. */
static size_t parse_nats(conn_t *c) {
  size_t used = 0;
  for (;;) {
    char *p = c->buf + used;
    size_t avail = c->len - used;
    char *nl = memmem(p, avail, "\r\n", 2);
    if (nl == NULL)
      return used;
    size_t ll = (size_t)(nl - p);
    if (ll >= 4 && (memcmp(p, "MSG ", 4) == 0 || memcmp(p, "HMSG", 4) == 0)) {
      bool h = p[0] == 'H';
      /* The last number on the line is the total size; for HMSG the one
       * before it is the header size. */
      char *sp = memrchr(p, ' ', ll);
      size_t total = strtoul(sp + 1, NULL, 10), hl = 0;
      if (h) {
        char *sp2 = memrchr(p, ' ', (size_t)(sp - p));
        hl = strtoul(sp2 + 1, NULL, 10);
      }
      if (avail < ll + 2 + total + 2)
        return used;
      on_event(c, p + ll + 2 + hl, total - hl);
      used += ll + 2 + total + 2;
      continue;
    }
    if (ll == 4 && memcmp(p, "PING", 4) == 0)
      send_all(c->fd, "PONG\r\n", 6);
    else if (ll == 4 && memcmp(p, "PONG", 4) == 0)
      subscribed(c);
    else if (ll >= 5 && memcmp(p, "INFO ", 5) == 0 && c->state == 0) {
      char sub[256];
      int n = snprintf(sub, sizeof sub,
                       "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,"
                       "\"no_responders\":true,\"protocol\":1}\r\nSUB tb.%s.run.*.evt.> 1\r\n"
                       "PING\r\n",
                       ns);
      send_all(c->fd, sub, (size_t)n);
    } else if (ll >= 4 && memcmp(p, "-ERR", 4) == 0) {
      fprintf(stderr, "fanout_sub: %.*s\n", (int)ll, p);
    }
    used += ll + 2;
  }
}

static size_t parse_mqtt(conn_t *c) {
  size_t used = 0;
  for (;;) {
    unsigned char *p = (unsigned char *)c->buf + used;
    size_t avail = c->len - used;
    if (avail < 2)
      return used;
    size_t rl = 0, mul = 1, i = 1;
    for (;; i++) {
      if (i >= avail)
        return used;
      rl += (p[i] & 127) * mul;
      mul *= 128;
      if (!(p[i] & 128))
        break;
    }
    size_t hdr = i + 1;
    if (avail < hdr + rl)
      return used;
    int type = p[0] >> 4;
    if (type == 2) { /* CONNACK: subscribe */
      char topic[128];
      int tl = snprintf(topic, sizeof topic, "tb/%s/run/+/evt/#", ns);
      unsigned char pkt[160];
      size_t n = 0;
      pkt[n++] = 0x82;
      pkt[n++] = (unsigned char)(2 + 2 + tl + 1);
      pkt[n++] = 0;
      pkt[n++] = 1;
      pkt[n++] = (unsigned char)(tl >> 8);
      pkt[n++] = (unsigned char)tl;
      memcpy(pkt + n, topic, (size_t)tl);
      n += (size_t)tl;
      pkt[n++] = 0;
      send_all(c->fd, pkt, n);
    } else if (type == 9) { /* SUBACK */
      subscribed(c);
    } else if (type == 3) { /* PUBLISH */
      int qos = (p[0] >> 1) & 3;
      size_t tl = ((size_t)p[hdr] << 8) | p[hdr + 1];
      size_t off = hdr + 2 + tl + (qos ? 2 : 0);
      on_event(c, (char *)p + off, hdr + rl - off);
    }
    used += hdr + rl;
  }
}

static size_t parse_tb(conn_t *c) {
  size_t used = 0;
  for (;;) {
    char *p = c->buf + used;
    char *nl = memchr(p, '\n', c->len - used);
    if (nl == NULL)
      return used;
    size_t ll = (size_t)(nl - p);
    if (memmem(p, ll, "\"method\":\"hello\"", 16)) {
      char req[256];
      int n = snprintf(req, sizeof req,
                       "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"auth\",\"params\":{\"role\":"
                       "\"observer\",\"client\":\"fanout\"}}\n"
                       "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"subscribe\",\"params\":"
                       "{\"every\":%ld}}\n",
                       every);
      send_all(c->fd, req, (size_t)n);
    } else if (memmem(p, ll, "\"id\":2,\"result\"", 15)) {
      subscribed(c);
    } else if (memmem(p, ll, "\"method\":\"event\"", 16)) {
      on_event(c, p, ll);
    }
    used += ll + 1;
  }
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: fanout_sub nats|mqtt|trainbus PORT N NS EVERY TIMEOUT_S\n");
    return 2;
  }
  if (strcmp(argv[1], "nats") == 0) {
    mode = M_NATS;
  } else if (strcmp(argv[1], "mqtt") == 0) {
    mode = M_MQTT;
  } else if (strcmp(argv[1], "trainbus") == 0) {
    mode = M_TB;
  } else {
    fprintf(stderr, "fanout_sub: unknown mode \"%s\" (nats, mqtt or trainbus)\n", argv[1]);
    return 2;
  }
  int port = atoi(argv[2]), n = atoi(argv[3]);
  ns = argv[4];
  every = atol(argv[5]);
  double timeout = atof(argv[6]);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  int ep = epoll_create1(0);
  conn_t *cs = calloc((size_t)n, sizeof *cs);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  for (int i = 0; i < n; i++) {
    conn_t *c = &cs[i];
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      fprintf(stderr, "fanout_sub: connect %d: %s\n", i, strerror(errno));
      return 1;
    }
    fcntl(c->fd, F_SETFL, O_NONBLOCK);
    c->cap = 1 << 16;
    c->buf = malloc(c->cap);
    if (mode == M_MQTT) {
      char id[32];
      int il = snprintf(id, sizeof id, "fo-%d-%d", getpid(), i);
      unsigned char pkt[64];
      size_t k = 0;
      pkt[k++] = 0x10;
      pkt[k++] = (unsigned char)(10 + 2 + il);
      memcpy(pkt + k, "\0\4MQTT\4\2\0\0", 10); /* protocol 3.1.1, clean session, no keepalive */
      k += 10;
      pkt[k++] = 0;
      pkt[k++] = (unsigned char)il;
      memcpy(pkt + k, id, (size_t)il);
      k += (size_t)il;
      send_all(c->fd, pkt, k);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
  }
  bool said_ready = false;
  double start = now_s();
  struct epoll_event evs[256];
  while (n_done < n && now_s() - start < timeout) {
    if (!said_ready && n_ready == n) {
      printf("ready\n");
      fflush(stdout);
      said_ready = true;
    }
    int k = epoll_wait(ep, evs, 256, 100);
    for (int e = 0; e < k; e++) {
      conn_t *c = &cs[evs[e].data.u32];
      for (;;) {
        if (c->cap - c->len < 4096) {
          c->cap *= 2;
          c->buf = realloc(c->buf, c->cap);
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (r <= 0)
          break;
        c->len += (size_t)r;
        size_t used = mode == M_NATS ? parse_nats(c) : mode == M_MQTT ? parse_mqtt(c) : parse_tb(c);
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
      }
    }
  }
  qsort(lat, n_lat, sizeof *lat, cmp);
  double span = t_last > t_first ? t_last - t_first : 0;
  printf("{\"mode\":\"%s\",\"connections\":%d,\"ready\":%d,\"done\":%d,\"delivered\":%zu,"
         "\"span_s\":%.3f,\"delivered_per_s\":%.0f,\"p50_us\":%.0f,\"p99_us\":%.0f,"
         "\"max_us\":%.0f}\n",
         argv[1], n, n_ready, n_done, n_lat, span, span > 0 ? (double)n_lat / span : 0,
         n_lat ? lat[n_lat / 2] : 0, n_lat ? lat[(size_t)(n_lat * 0.99)] : 0,
         n_lat ? lat[n_lat - 1] : 0);
  for (int i = 0; i < n; i++) {
    close(cs[i].fd);
    free(cs[i].buf);
  }
  free(cs);
  free(lat);
  close(ep);
  return n_done == n ? 0 : 1;
}
