/* The protocol's vocabulary: error codes, methods, roles, event names and run
 * states, each generated from its X-macro table in protocol.h so a name and
 * its number cannot drift apart; plus the '*' glob used for patterns. Lookups
 * are linear scans over tables of at most 16 entries, which beats hashing at
 * this size. */
#include <string.h>

#include "trainbus/protocol.h"

const char *tb_proto_strerror(int code) {
  switch (code) {
#define X(name, c, wire, text)                                                                     \
  case c:                                                                                          \
    return text;
    TB_PROTO_ERR_MAP(X)
#undef X
  default:
    return "unknown error";
  }
}

const char *tb_proto_err_name(int code) {
  switch (code) {
#define X(name, c, wire, text)                                                                     \
  case c:                                                                                          \
    return wire;
    TB_PROTO_ERR_MAP(X)
#undef X
  default:
    return "unknown";
  }
}

static const char *const method_names[] = {"",
#define X(name, wire, role) wire,
                                           TB_METHOD_MAP(X)
#undef X
};

static const tb_role_t method_roles[] = {TB_ROLE_NONE,
#define X(name, wire, role) role,
                                         TB_METHOD_MAP(X)
#undef X
};

#define N_METHODS (sizeof method_names / sizeof method_names[0])

const char *tb_method_name(tb_method_t m) {
  return (unsigned)m < N_METHODS ? method_names[m] : "";
}

tb_method_t tb_method_from_name(const char *name) {
  for (unsigned i = 1; i < N_METHODS; i++)
    if (strcmp(method_names[i], name) == 0)
      return (tb_method_t)i;
  return TB_METHOD_INVALID;
}

tb_role_t tb_method_role(tb_method_t m) {
  return (unsigned)m < N_METHODS ? method_roles[m] : TB_ROLE_CONTROLLER;
}

const char *tb_role_name(tb_role_t r) {
  switch (r) {
  case TB_ROLE_OBSERVER:
    return "observer";
  case TB_ROLE_CONTROLLER:
    return "controller";
  case TB_ROLE_TRAINER:
    return "trainer";
  default:
    return "none";
  }
}

bool tb_role_may(tb_role_t role, tb_role_t need) {
  switch (need) {
  case TB_ROLE_NONE:
    return true;
  case TB_ROLE_OBSERVER:
    return role == TB_ROLE_OBSERVER || role == TB_ROLE_CONTROLLER;
  case TB_ROLE_TRAINER:
    return role == TB_ROLE_TRAINER || role == TB_ROLE_CONTROLLER;
  default:
    return role == TB_ROLE_CONTROLLER;
  }
}

static const char *const event_names[] = {"",
#define X(name, wire, batch) wire,
                                          TB_EVENT_MAP(X)
#undef X
};

static const bool event_batch[] = {false,
#define X(name, wire, batch) batch,
                                   TB_EVENT_MAP(X)
#undef X
};

#define N_EVENTS (sizeof event_names / sizeof event_names[0])

const char *tb_event_name(tb_event_kind_t k) {
  return (unsigned)k < N_EVENTS ? event_names[k] : "";
}

tb_event_kind_t tb_event_from_name(const char *name) {
  for (unsigned i = 1; i < N_EVENTS; i++)
    if (strcmp(event_names[i], name) == 0)
      return (tb_event_kind_t)i;
  return TB_EVENT_INVALID;
}

bool tb_event_is_batch(tb_event_kind_t k) {
  return (unsigned)k < N_EVENTS && event_batch[k];
}

static const char *const state_names[] = {"",
#define X(name, wire, final) wire,
                                          TB_RUN_STATE_MAP(X)
#undef X
};

static const bool state_final[] = {false,
#define X(name, wire, final) final,
                                   TB_RUN_STATE_MAP(X)
#undef X
};

#define N_STATES (sizeof state_names / sizeof state_names[0])

bool tb_run_state_is_final(tb_run_state_t s) {
  return (unsigned)s < N_STATES && state_final[s];
}

const char *tb_run_state_name(tb_run_state_t s) {
  return (unsigned)s < N_STATES ? state_names[s] : "";
}

tb_run_state_t tb_run_state_from_name(const char *name) {
  for (unsigned i = 1; i < N_STATES; i++)
    if (strcmp(state_names[i], name) == 0)
      return (tb_run_state_t)i;
  return TB_RUN_INVALID;
}

/* Iterative glob with one backtrack point (the last '*'), which is enough for
 * a pattern language with '*' as its only metacharacter and keeps the worst
 * case at O(len(pattern) * len(name)) without recursion. */
bool tb_proto_match(const char *p, const char *s) {
  const char *star = NULL, *resume = NULL;
  while (*s) {
    if (*p == '*') {
      star = p++;
      resume = s;
    } else if (*p == *s) {
      p++;
      s++;
    } else if (star) {
      p = star + 1;
      s = ++resume;
    } else {
      return false;
    }
  }
  while (*p == '*')
    p++;
  return *p == '\0';
}
