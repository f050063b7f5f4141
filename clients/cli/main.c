/* trainbus: the command-line client. Subcommands live in their own files
 * (train.c trains in this process; remote.c and watch.c talk to a daemon);
 * this one dispatches and prints the overall help. */
#include "cli.h"
#include "trainbus/version.h"

#include <string.h>

static void usage(FILE *f) {
  fprintf(f, "usage: trainbus <command> [options]\n"
             "\n"
             "commands:\n"
             "  train [JOB.json]   train a job in this process (the built-in demo without JOB)\n"
             "\n"
             "  watch              follow a run of a daemon: progress bar, lines, or --json\n"
             "  status             one run's state, epoch, batch and learning rate\n"
             "  runs               every run the daemon knows\n"
             "  history            a run's epoch_end logs as a table, or --csv\n"
             "  set-lr VALUE       set a run's learning rate\n"
             "  stop               stop a run after its current batch\n"
             "  pause, resume      hold a run at the next batch boundary, let it go on\n"
             "  checkpoint         write a checkpoint of a run now\n"
             "  submit JOB.json    queue a job on the daemon\n"
             "  cancel             remove a queued run, or end a running one\n"
             "\n"
             "The daemon's address and token come from --connect HOST:PORT (or a unix\n"
             "socket path) and --token, else TRAINBUS_ADDR and TRAINBUS_TOKEN, else the\n"
             "files `address` and `token` trainbusd writes in its state directory\n"
             "(--state-dir, $TRAINBUS_STATE_DIR, else ~/.trainbus; read again when watch\n"
             "reconnects, and its token is sent only to its own address). --run ID picks\n"
             "the run; the default is the only run that has not ended.\n"
             "\n"
             "`trainbus <command> --help` documents each command; `trainbus --version`\n"
             "prints the version.\n"
             "\n"
             "exit codes: 0 done, 1 refused by the daemon (or the run or training failed),\n"
             "            2 usage or bad job, 3 cannot connect to the daemon\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return TB_EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    usage(stdout);
    return TB_EXIT_OK;
  }
  if (strcmp(cmd, "--version") == 0) {
    printf("trainbus %s\n", TB_VERSION);
    return TB_EXIT_OK;
  }
  if (strcmp(cmd, "train") == 0)
    return tb_cli_train(argc - 1, argv + 1);
  if (strcmp(cmd, "watch") == 0)
    return tb_cli_watch(argc - 1, argv + 1);
  if (strcmp(cmd, "status") == 0)
    return tb_cli_status(argc - 1, argv + 1);
  if (strcmp(cmd, "runs") == 0)
    return tb_cli_runs(argc - 1, argv + 1);
  if (strcmp(cmd, "history") == 0)
    return tb_cli_history(argc - 1, argv + 1);
  if (strcmp(cmd, "submit") == 0)
    return tb_cli_submit(argc - 1, argv + 1);
  if (strcmp(cmd, "set-lr") == 0 || strcmp(cmd, "stop") == 0 || strcmp(cmd, "pause") == 0 ||
      strcmp(cmd, "resume") == 0 || strcmp(cmd, "checkpoint") == 0 || strcmp(cmd, "cancel") == 0)
    return tb_cli_control(argc - 1, argv + 1);
  fprintf(stderr, "trainbus: unknown command '%s' (see trainbus --help)\n", cmd);
  return TB_EXIT_USAGE;
}
