/* Tries each io_uring system call and prints what the kernel (or the
 * seccomp filter) answered: "<call> ok", or "<call> errno <n>".
 * io_uring_enter and io_uring_register get a bad fd: reaching the kernel
 * gives EBADF, a filter EPERM. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *call, long r) {
    if (r >= 0)
        printf("%s ok\n", call);
    else
        printf("%s errno %d\n", call, errno);
}

int main(void) {
    unsigned char params[120];
    memset(params, 0, sizeof params);
    long fd = syscall(__NR_io_uring_setup, 1, params);
    report("io_uring_setup", fd);
    if (fd >= 0)
        close((int)fd);
    report("io_uring_enter", syscall(__NR_io_uring_enter, -1, 0, 0, 0, NULL, 0));
    report("io_uring_register", syscall(__NR_io_uring_register, -1, 0, NULL, 0));
    return 0;
}
