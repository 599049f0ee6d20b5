/*
 * Executes every software-interrupt form an unprivileged process can write — INT n for each vector
 * (but 0x80, the 32-bit system-call gate), INT3 and INT1 — each in a child process, and prints the
 * signal that ended the child. A CPU that gets the privilege rules of SDM Vol. 3A 6.12.1.1 wrong
 * crashes the kernel instead (issue 16, defect 2). Built static by the integration tests and run
 * both on the host CPU and in a SharpVisor guest; the two outputs must match.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void run(const char *name, const unsigned char *code, size_t len)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        unsigned char *page = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            _exit(100);
        memcpy(page, code, len);
        ((void (*)(void))page)();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        printf("%s signal %d\n", name, WTERMSIG(status));
    else
        printf("%s exit %d\n", name, WEXITSTATUS(status));
}

int main(void)
{
    char name[32];
    for (int v = 0; v < 256; v++) {
        if (v == 0x80)
            continue;
        unsigned char code[] = { 0xCD, (unsigned char)v, 0xC3 };
        snprintf(name, sizeof name, "int 0x%02x", v);
        run(name, code, sizeof code);
    }
    const unsigned char int3[] = { 0xCC, 0xC3 }, int1[] = { 0xF1, 0xC3 };
    run("int3", int3, sizeof int3);
    run("int1", int1, sizeof int1);
    printf("done\n");
    return 0;
}
