/*
 * Runs generated ring-3 instruction sequences and reports how each ended (issue 16, the random
 * ring-3 instruction test). The same static binary runs natively on the host and in a SharpVisor
 * guest; the test compares the two reports line by line.
 *
 *   ring3-cases CASES-FILE
 *
 * CASES-FILE: u32 count, then per case: u8 length, the code bytes, 17 u64 (RAX, RCX, RDX, RBX,
 * RSP, RBP, RSI, RDI, R8-R15, RFLAGS), 4096 bytes of data-page contents.
 *
 * Each case runs in a child process, at fixed addresses so that pointer values match on both
 * sides: code at CODE (followed by INT3, so a case that runs off its end stops with SIGTRAP),
 * data at DATA, stack at STACK. Whatever signal stops it (SIGTRAP, SIGSEGV, SIGILL, SIGFPE,
 * SIGBUS) is caught on an alternate stack, which prints:
 *
 *   case N sig S rip OFFSET flags RFLAGS regs HASH mem HASH
 *
 * with RIP relative to CODE, and FNV-1a hashes of the 16 general registers and of the data and
 * stack pages. A case still running after two seconds (or twenty under emulation: see argv[2])
 * reports "timeout".
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#define CODE 0x20000000ul
#define DATA 0x10000000ul
#define STACK 0x30000000ul
#define REGS 0x40000000ul /* the register block the trampoline loads */

static int case_number;

static uint64_t fnv(const void *p, size_t n, uint64_t h)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

static void report_line(const char *line)
{
    size_t n = strlen(line);
    while (n > 0) {
        ssize_t w = write(1, line, n);
        if (w <= 0)
            break;
        line += w, n -= (size_t)w;
    }
}

static void on_signal(int sig, siginfo_t *info, void *context)
{
    (void)info;
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    if (sig == SIGALRM) {
        char line[64];
        snprintf(line, sizeof line, "case %d timeout\n", case_number);
        report_line(line);
        _exit(0);
    }
    uint64_t regs[16] = {
        (uint64_t)g[REG_RAX], (uint64_t)g[REG_RCX], (uint64_t)g[REG_RDX], (uint64_t)g[REG_RBX],
        (uint64_t)g[REG_RSP], (uint64_t)g[REG_RBP], (uint64_t)g[REG_RSI], (uint64_t)g[REG_RDI],
        (uint64_t)g[REG_R8], (uint64_t)g[REG_R9], (uint64_t)g[REG_R10], (uint64_t)g[REG_R11],
        (uint64_t)g[REG_R12], (uint64_t)g[REG_R13], (uint64_t)g[REG_R14], (uint64_t)g[REG_R15],
    };
    uint64_t mem = fnv((const void *)DATA, 4096, 0xCBF29CE484222325ull);
    mem = fnv((const void *)STACK, 8192, mem);
    char line[200];
    snprintf(line, sizeof line, "case %d sig %d rip %llx flags %llx regs %016llx mem %016llx\n", case_number, sig,
             (unsigned long long)((uint64_t)g[REG_RIP] - CODE), (unsigned long long)g[REG_EFL],
             (unsigned long long)fnv(regs, sizeof regs, 0xCBF29CE484222325ull), (unsigned long long)mem);
    report_line(line);
    _exit(0);
}

/* Loads RAX..R15 and RFLAGS from the block at REGS, then RSP, and jumps to CODE. */
__asm__(".globl enter_case\n"
        "enter_case:\n"
        "  movabs $0x40000000, %rsp\n"
        "  pop %rax\n pop %rcx\n pop %rdx\n pop %rbx\n"
        "  add $8, %rsp\n" /* RSP: loaded last */
        "  pop %rbp\n pop %rsi\n pop %rdi\n"
        "  pop %r8\n pop %r9\n pop %r10\n pop %r11\n pop %r12\n pop %r13\n pop %r14\n pop %r15\n"
        "  popfq\n"
        "  mov 0x40000020, %rsp\n"
        "  jmp *0x40000100\n");
void enter_case(void);

static void *map_fixed(unsigned long address, size_t size, int prot)
{
    void *p = mmap((void *)address, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        _exit(3);
    }
    return p;
}

static void run_case(const uint8_t *code, int length, const uint64_t *regs, const uint8_t *data, unsigned timeout)
{
    memcpy(map_fixed(CODE, 8192, PROT_READ | PROT_WRITE | PROT_EXEC), code, length);
    ((uint8_t *)CODE)[length] = 0xCC; /* INT3 */
    memcpy(map_fixed(DATA, 4096, PROT_READ | PROT_WRITE), data, 4096);
    memset(map_fixed(STACK, 8192, PROT_READ | PROT_WRITE), 0, 8192);
    uint64_t *block = map_fixed(REGS, 4096, PROT_READ | PROT_WRITE);
    memcpy(block, regs, 17 * 8);
    block[0x100 / 8] = CODE;

    static uint8_t alternate[65536];
    stack_t ss = {.ss_sp = alternate, .ss_size = sizeof alternate};
    sigaltstack(&ss, NULL);
    struct sigaction sa = {.sa_sigaction = on_signal, .sa_flags = SA_SIGINFO | SA_ONSTACK};
    sigfillset(&sa.sa_mask);
    int signals[] = {SIGTRAP, SIGSEGV, SIGILL, SIGFPE, SIGBUS, SIGALRM};
    for (unsigned i = 0; i < sizeof signals / sizeof signals[0]; i++)
        sigaction(signals[i], &sa, NULL);
    alarm(timeout);
    enter_case();
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: ring3-cases CASES-FILE [TIMEOUT-SECONDS]\n");
        return 2;
    }
    unsigned timeout = argc > 2 ? (unsigned)atoi(argv[2]) : 2;
    FILE *f = fopen(argv[1], "rb");
    uint32_t count;
    if (!f || fread(&count, 4, 1, f) != 1) {
        fprintf(stderr, "ring3-cases: cannot read %s\n", argv[1]);
        return 2;
    }
    for (uint32_t i = 0; i < count; i++) {
        uint8_t length, code[256], data[4096];
        uint64_t regs[17];
        if (fread(&length, 1, 1, f) != 1 || fread(code, 1, length, f) != length || fread(regs, 8, 17, f) != 17 ||
            fread(data, 1, 4096, f) != 4096) {
            fprintf(stderr, "ring3-cases: %s is truncated at case %u\n", argv[1], i);
            return 2;
        }
        case_number = (int)i;
        fflush(stdout);
        pid_t child = fork();
        if (child == 0)
            run_case(code, length, regs, data, timeout);
        int status;
        waitpid(child, &status, 0);
        if (!WIFEXITED(status))
            printf("case %u died with status 0x%x\n", i, status);
    }
    printf("cases done\n");
    return 0;
}
