/* Helpers of the server tests; see srv_util.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "srv_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- files ------------------------------------------------------------------ */

char *su_tmpdir(void) {
  const char *base = getenv("TMPDIR");
  char tmpl[512];
  snprintf(tmpl, sizeof(tmpl), "%s/tbsrv-XXXXXX", base && base[0] ? base : "/tmp");
  char *d = mkdtemp(tmpl);
  assert_non_null(d);
  return strdup(d);
}

void su_rmdir(const char *dir) {
  if (dir == NULL || strncmp(dir, "/", 1) != 0 || strstr(dir, "tbsrv-") == NULL)
    return;
  char cmd[700];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "warning: could not remove %s\n", dir);
}

void su_write(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(fputs(text, f) >= 0, 1);
  assert_int_equal(fclose(f), 0);
}

char *su_read(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return NULL;
  size_t cap = 4096, n = 0, k;
  char *buf = malloc(cap + 1);
  while ((k = fread(buf + n, 1, cap - n, f)) > 0) {
    n += k;
    if (n == cap)
      buf = realloc(buf, (cap *= 2) + 1);
  }
  fclose(f);
  buf[n] = '\0';
  if (len != NULL)
    *len = n;
  return buf;
}

bool su_same_bytes(const char *a, const char *b) {
  size_t la, lb;
  char *x = su_read(a, &la), *y = su_read(b, &lb);
  bool same = x != NULL && y != NULL && la == lb && la > 0 && memcmp(x, y, la) == 0;
  free(x);
  free(y);
  return same;
}

uint64_t su_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void su_sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* ---- raw connections -------------------------------------------------------- */

void su_connect(su_conn_t *c, const char *addr, int rcvbuf) {
  memset(c, 0, sizeof(*c));
  char host[64];
  const char *colon = strrchr(addr, ':');
  assert_non_null(colon);
  snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
  assert_int_equal(inet_pton(AF_INET, host, &sa.sin_addr), 1);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(c->fd >= 0);
  if (rcvbuf > 0)
    assert_int_equal(setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
  assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
  c->cap = 1 << 16;
  c->buf = malloc(c->cap);
  assert_non_null(c->buf);
}

void su_send(su_conn_t *c, const char *s, size_t len) {
  while (len > 0) {
    ssize_t n = send(c->fd, s, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return; /* the server closed: what it said is still readable */
    s += n;
    len -= (size_t)n;
  }
}

void su_sends(su_conn_t *c, const char *s) {
  su_send(c, s, strlen(s));
}

int su_line(su_conn_t *c, int timeout_ms, char **line) {
  uint64_t deadline = su_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    char *start = c->buf + c->off;
    char *nl = memchr(start, '\n', c->len - c->off);
    if (nl != NULL) {
      size_t n = (size_t)(nl - start);
      *line = malloc(n + 1);
      memcpy(*line, start, n);
      (*line)[n] = '\0';
      c->off += n + 1;
      return 1;
    }
    if (c->eof)
      return 0;
    uint64_t now = su_now_ms();
    if (now >= deadline)
      return -1;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int pr = poll(&pfd, 1, (int)(deadline - now));
    if (pr < 0 && errno == EINTR)
      continue;
    if (pr <= 0)
      return -1;
    /* Compact only when reading, so a full buffer costs one move per read
     * rather than one per line. */
    memmove(c->buf, c->buf + c->off, c->len - c->off);
    c->len -= c->off;
    c->off = 0;
    if (c->cap - c->len < 65536) {
      c->cap *= 2;
      c->buf = realloc(c->buf, c->cap);
      assert_non_null(c->buf);
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      c->eof = true;
      continue;
    }
    c->len += (size_t)n;
  }
}

int su_msg(su_conn_t *c, int timeout_ms, tb_smsg_t *m) {
  char *line;
  memset(m, 0, sizeof(*m));
  int r = su_line(c, timeout_ms, &line);
  if (r != 1)
    return r;
  tb_proto_err_t err;
  int d = tb_smsg_decode(line, strlen(line), m, &err);
  if (d != 0)
    fprintf(stderr, "undecodable line from the server: %.300s (%s)\n", line, err.msg);
  free(line);
  assert_int_equal(d, 0);
  return 1;
}

bool su_wait_eof(su_conn_t *c, int timeout_ms) {
  uint64_t deadline = su_now_ms() + (uint64_t)timeout_ms;
  char *line;
  for (;;) {
    uint64_t now = su_now_ms();
    int r = su_line(c, now < deadline ? (int)(deadline - now) : 0, &line);
    if (r == 0)
      return true;
    if (r < 0)
      return false;
    free(line);
  }
}

void su_close(su_conn_t *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  free(c->buf);
  c->buf = NULL;
}

void su_auth(su_conn_t *c, const char *role, const char *token) {
  tb_smsg_t m;
  assert_int_equal(su_msg(c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_HELLO);
  tb_smsg_free(&m);
  char req[512];
  snprintf(
      req, sizeof(req),
      "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"auth\",\"params\":{\"role\":\"%s\"%s%s%s}}\n",
      role, token ? ",\"token\":\"" : "", token ? token : "", token ? "\"" : "");
  su_sends(c, req);
  assert_int_equal(su_msg(c, 5000, &m), 1);
  assert_int_equal(m.kind, TB_SMSG_RESULT);
  tb_smsg_free(&m);
}

/* ---- child processes ------------------------------------------------------------ */

void su_dump(const su_proc_t *p) {
  char *text = su_read(p->log, NULL);
  fprintf(stderr, "---- %s ----\n%s---- end ----\n", p->log, text ? text : "(none)\n");
  free(text);
}

void su_spawn(su_proc_t *p, char *const argv[], const char *log) {
  memset(p, 0, sizeof(*p));
  snprintf(p->log, sizeof(p->log), "%s", log);
  p->pid = fork();
  assert_true(p->pid >= 0);
  if (p->pid == 0) {
    /* A failing test longjmps past its cleanup: the daemon must not outlive
     * the test process. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
      _exit(126);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    unsetenv("TRAINBUS_TOKEN");
    unsetenv("TRAINBUS_STATE_DIR");
    execv(argv[0], argv);
    _exit(127);
  }
  uint64_t deadline = su_now_ms() + 15000;
  while (su_now_ms() < deadline) {
    char *text = su_read(log, NULL);
    const char *at = text ? strstr(text, "listening on ") : NULL;
    if (at != NULL && sscanf(at + 13, "%127[0-9.:]", p->addr) == 1 && strchr(p->addr, ':')) {
      free(text);
      return;
    }
    free(text);
    if (su_wait(p, 0) >= 0)
      break;
    su_sleep_ms(5);
  }
  su_dump(p);
  fail_msg("%s did not report its address", argv[0]);
}

void su_daemon(su_proc_t *p, const char *state, const char *const *extra) {
  char *argv[32];
  int n = 0;
  argv[n++] = SU_TRAINBUSD;
  argv[n++] = "--listen";
  argv[n++] = "127.0.0.1:0";
  argv[n++] = "--state-dir";
  argv[n++] = (char *)state;
  argv[n++] = "--token";
  argv[n++] = SU_TOKEN;
  for (int i = 0; extra != NULL && extra[i] != NULL && n < 31; i++)
    argv[n++] = (char *)extra[i];
  argv[n] = NULL;
  char log[600];
  static int k;
  mkdir(state, 0700); /* the daemon accepts an existing folder; the log goes in it */
  snprintf(log, sizeof(log), "%s/daemon-%d.log", state, ++k);
  su_spawn(p, argv, log);
}

int su_wait(su_proc_t *p, int timeout_ms) {
  uint64_t deadline = su_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    if (!p->reaped) {
      pid_t r = waitpid(p->pid, &p->status, WNOHANG);
      if (r == p->pid)
        p->reaped = true;
    }
    if (p->reaped)
      return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : 128 + WTERMSIG(p->status);
    if (su_now_ms() >= deadline)
      return -1;
    su_sleep_ms(5);
  }
}

void su_kill(su_proc_t *p) {
  if (p->pid > 0 && !p->reaped) {
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &p->status, 0);
    p->reaped = true;
  }
}
