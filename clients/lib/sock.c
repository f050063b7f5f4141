/* Sockets for the client: address parsing, a connect bounded by a timeout,
 * and a send that never raises SIGPIPE.
 *
 * The socket is non-blocking throughout; every wait is a poll() with the time
 * left to a monotonic deadline, so no call blocks longer than the caller said.
 * Addresses are "HOST:PORT", "[V6HOST]:PORT", "unix:PATH" or a path with a
 * '/', and TCP names go through getaddrinfo, trying each address in turn. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int64_t tb__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tb__deadline(int timeout_ms) {
  return timeout_ms < 0 ? -1 : tb__now_ms() + timeout_ms;
}

/* Milliseconds left before deadline for poll(): -1 for none, 0 if past. */
static int left_ms(int64_t deadline) {
  if (deadline < 0)
    return -1;
  int64_t left = deadline - tb__now_ms();
  return left <= 0 ? 0 : left > 1000000000 ? 1000000000 : (int)left;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return -errno;
  return 0;
}

/* Starts a connect and waits for it to complete. */
static int connect_wait(int fd, const struct sockaddr *sa, socklen_t sa_len, int64_t deadline) {
  if (connect(fd, sa, sa_len) == 0)
    return 0;
  if (errno != EINPROGRESS && errno != EINTR)
    return -errno;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n = poll(&p, 1, left_ms(deadline));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      return TB_CLIENT_ETIMEOUT;
    int so = 0;
    socklen_t so_len = sizeof so;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &so_len) < 0)
      return -errno;
    return so ? -so : 0;
  }
}

static int open_unix(const char *path, int64_t deadline, tb_client_err_t *err) {
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  if (path[0] == '\0' || strlen(path) >= sizeof sun.sun_path)
    return tb__cerr(err, TB_CLIENT_EADDRESS,
                    "unix socket path '%s': empty or longer than %zu bytes", path,
                    sizeof sun.sun_path - 1);
  memcpy(sun.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return tb__cerr(err, -errno, "socket: %s", strerror(errno));
  int rc = set_nonblock(fd);
  if (rc == 0)
    rc = connect_wait(fd, (struct sockaddr *)&sun, sizeof sun, deadline);
  if (rc != 0) {
    close(fd);
    return tb__cerr(err, rc, "cannot connect to unix:%s: %s", path, tb_client_strerror(rc));
  }
  return fd;
}

static int open_tcp(const char *addr, int64_t deadline, tb_client_err_t *err) {
  char host[512];
  const char *port;
  const char *colon = strrchr(addr, ':');
  if (addr[0] == '[') {
    const char *close_br = strchr(addr, ']');
    if (close_br == NULL || close_br[1] != ':')
      return tb__cerr(err, TB_CLIENT_EADDRESS, "address '%s': expected [HOST]:PORT", addr);
    snprintf(host, sizeof host, "%.*s", (int)(close_br - addr - 1), addr + 1);
    port = close_br + 2;
  } else {
    if (colon == NULL || colon == addr)
      return tb__cerr(err, TB_CLIENT_EADDRESS,
                      "address '%s': expected HOST:PORT, unix:PATH or a socket path", addr);
    if ((size_t)(colon - addr) >= sizeof host)
      return tb__cerr(err, TB_CLIENT_EADDRESS, "address '%s': host name too long", addr);
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    port = colon + 1;
  }
  char *end;
  long pn = strtol(port, &end, 10);
  if (port[0] == '\0' || *end != '\0' || pn < 1 || pn > 65535)
    return tb__cerr(err, TB_CLIENT_EADDRESS, "address '%s': port must be 1..65535", addr);

  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  int g = getaddrinfo(host, port, &hints, &res);
  if (g != 0)
    return tb__cerr(err, TB_CLIENT_EADDRESS, "cannot resolve '%s': %s", host, gai_strerror(g));
  int rc = TB_CLIENT_EADDRESS;
  int fd = -1;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      rc = -errno;
      continue;
    }
    rc = set_nonblock(fd);
    if (rc == 0)
      rc = connect_wait(fd, ai->ai_addr, ai->ai_addrlen, deadline);
    if (rc == 0)
      break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0)
    return tb__cerr(err, rc, "cannot connect to %s: %s", addr, tb_client_strerror(rc));
  /* Requests are small and answered one by one: do not let Nagle hold them. */
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

int tb__sock_open(const char *addr, int timeout_ms, tb_client_err_t *err) {
  int64_t deadline = tb__deadline(timeout_ms);
  if (strncmp(addr, "unix:", 5) == 0)
    return open_unix(addr + 5, deadline, err);
  if (strchr(addr, '/') != NULL)
    return open_unix(addr, deadline, err);
  return open_tcp(addr, deadline, err);
}

int tb__sock_send(int fd, const char *buf, size_t len, int64_t deadline) {
  size_t off = 0;
  while (off < len) {
    /* MSG_NOSIGNAL: a closed peer gives EPIPE instead of killing the caller. */
    ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      return -errno;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r = poll(&p, 1, left_ms(deadline));
    if (r < 0 && errno != EINTR)
      return -errno;
    if (r == 0)
      return TB_CLIENT_ETIMEOUT;
  }
  return 0;
}

ssize_t tb__recv(tb_client_t *c, char *buf, size_t cap, tb_client_err_t *err) {
  if (c->tls_conn != NULL)
    return tb__tls_recv(c, buf, cap, err);
  for (;;) {
    ssize_t n = recv(c->fd, buf, cap, 0);
    if (n >= 0)
      return n;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return -EAGAIN;
    int e = errno;
    return tb__cerr(err, -e, "reading from the server: %s", strerror(e));
  }
}

int tb__send(tb_client_t *c, const char *buf, size_t len, int64_t deadline, tb_client_err_t *err) {
  if (c->tls_conn != NULL)
    return tb__tls_send(c, buf, len, deadline, err);
  int rc = tb__sock_send(c->fd, buf, len, deadline);
  if (rc != 0)
    return tb__cerr(err, rc, "%s", tb_client_strerror(rc));
  return 0;
}
