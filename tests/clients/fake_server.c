/* The fake server behind the client library's tests (see fake_server.h). It
 * is deliberately dumb: it does not parse JSON, it checks substrings, so a
 * script states exactly the bytes the client must send and receive. */
#include "fake_server.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static void fail(fake_server_t *fs, int step, const char *what) {
  if (fs->failure[0] == '\0')
    snprintf(fs->failure, sizeof fs->failure, "step %d: %s", step, what);
}

/* Reads one non-empty line (without '\n') within 5 s; false at EOF or
 * timeout. Empty lines are skipped, as the protocol says (a plaintext client
 * starts with one). */
static bool read_line(int fd, char *out, size_t cap) {
  size_t n = 0;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0)
      return false;
    char ch;
    ssize_t r = read(fd, &ch, 1);
    if (r <= 0)
      return false;
    if (ch == '\n' && n == 0)
      continue;
    if (ch == '\n') {
      out[n] = '\0';
      return true;
    }
    if (n + 1 < cap)
      out[n++] = ch;
  }
}

static bool contains_all(const char *line, const char *want) {
  char buf[2048];
  snprintf(buf, sizeof buf, "%s", want);
  for (char *save = NULL, *t = strtok_r(buf, "|", &save); t; t = strtok_r(NULL, "|", &save))
    if (strstr(line, t) == NULL)
      return false;
  return true;
}

static void *run(void *arg) {
  fake_server_t *fs = arg;
  fs->conn_fd = accept(fs->listen_fd, NULL, NULL);
  for (int i = 0; fs->steps[i].op != FS_END; i++) {
    const fs_step_t *s = &fs->steps[i];
    char line[4096];
    switch (s->op) {
    case FS_SEND:
    case FS_RAW: {
      size_t len = strlen(s->text);
      if (send(fs->conn_fd, s->text, len, MSG_NOSIGNAL) != (ssize_t)len ||
          (s->op == FS_SEND && send(fs->conn_fd, "\n", 1, MSG_NOSIGNAL) != 1))
        fail(fs, i, "send failed");
      break;
    }
    case FS_EXPECT:
      if (!read_line(fs->conn_fd, line, sizeof line)) {
        fail(fs, i, "no line from the client");
        break;
      }
      fs->n_lines++;
      if (getenv("FAKE_DEBUG"))
        fprintf(stderr, "fake got: %s\n", line);
      snprintf(fs->last_line, sizeof fs->last_line, "%s", line);
      if (!contains_all(line, s->text)) {
        char msg[1024];
        snprintf(msg, sizeof msg, "expected '%s' in '%.800s'", s->text, line);
        fail(fs, i, msg);
      }
      break;
    case FS_CLOSE:
      close(fs->conn_fd);
      fs->conn_fd = -1;
      break;
    case FS_ACCEPT: {
      struct pollfd p = {.fd = fs->listen_fd, .events = POLLIN};
      if (poll(&p, 1, 5000) <= 0) {
        fail(fs, i, "no second connection");
        break;
      }
      fs->conn_fd = accept(fs->listen_fd, NULL, NULL);
      break;
    }
    case FS_SLEEP: {
      struct timespec ts = {.tv_sec = s->ms / 1000, .tv_nsec = (s->ms % 1000) * 1000000L};
      nanosleep(&ts, NULL);
      break;
    }
    case FS_DRAIN:
      while (read_line(fs->conn_fd, line, sizeof line))
        ;
      break;
    default:
      break;
    }
  }
  if (fs->conn_fd >= 0)
    close(fs->conn_fd);
  fs->conn_fd = -1;
  return NULL;
}

int fake_server_start(fake_server_t *fs, const fs_step_t *steps, bool unix_socket) {
  memset(fs, 0, sizeof *fs);
  fs->steps = steps;
  fs->conn_fd = -1;
  if (unix_socket) {
    snprintf(fs->unix_path, sizeof fs->unix_path, "/tmp/tb-fake-%d-%ld.sock", (int)getpid(),
             (long)time(NULL) ^ (long)(size_t)fs);
    unlink(fs->unix_path);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", fs->unix_path);
    fs->listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fs->listen_fd < 0 || bind(fs->listen_fd, (struct sockaddr *)&sun, sizeof sun) < 0 ||
        listen(fs->listen_fd, 4) < 0)
      return -errno;
    snprintf(fs->addr, sizeof fs->addr, "unix:%s", fs->unix_path);
  } else {
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    fs->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fs->listen_fd < 0 || bind(fs->listen_fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        listen(fs->listen_fd, 4) < 0 ||
        getsockname(fs->listen_fd, (struct sockaddr *)&sin, &len) < 0)
      return -errno;
    snprintf(fs->addr, sizeof fs->addr, "127.0.0.1:%d", ntohs(sin.sin_port));
  }
  return pthread_create(&fs->thread, NULL, run, fs) == 0 ? 0 : -1;
}

const char *fake_server_join(fake_server_t *fs) {
  pthread_join(fs->thread, NULL);
  close(fs->listen_fd);
  if (fs->unix_path[0])
    unlink(fs->unix_path);
  return fs->failure;
}
