/*
 * The pod sandbox ("pause") image's only program, built by hack/images.sh with
 * `gcc -static` so the image holds nothing else. It keeps the pod's namespaces alive,
 * exits 0 on SIGTERM or SIGINT (the kubelet stops a sandbox with SIGTERM), and reaps
 * zombies when it is PID 1 of a pod that shares its process namespace.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int signo) {
  (void)signo;
  _exit(0);
}

static void on_child(int signo) {
  (void)signo;
  int saved_errno = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved_errno;
}

static int handle(int signo, void (*handler)(int)) {
  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_handler = handler;
  action.sa_flags = signo == SIGCHLD ? SA_NOCLDSTOP | SA_RESTART : 0;
  sigemptyset(&action.sa_mask);
  return sigaction(signo, &action, NULL);
}

int main(int argc, char **argv) {
  if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
    puts("kubekms pause");
    return 0;
  }
  if (handle(SIGTERM, on_stop) < 0 || handle(SIGINT, on_stop) < 0 ||
      handle(SIGCHLD, on_child) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) {
    pause();
  }
}
