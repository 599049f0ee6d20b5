/*
 * The host CPU as the oracle for alignment checking (SDM Vol. 3A 6.15): runs machine-code cases in
 * ring 3 with EFLAGS.AC set (Linux sets CR0.AM) and reports the signal each ends with. Built by the
 * host's gcc and run by AlignmentCheckTests; the same cases run on the interpreter.
 *
 * Input (stdin), one case per line:   d|s OFFSET HEXCODE
 *   d: RBX = RSI = RDI = DATA + OFFSET, RSP = RBP = STACK
 *   s: RBX = RSI = RDI = DATA,          RSP = RBP = STACK + OFFSET
 * Every other general register is 0, XMM1 and MM1 are all ones (MASKMOVDQU/MASKMOVQ masks), the x87
 * state is FNINIT's, RFLAGS = AC | IF. The code is assembled for address CODE; after it a jump
 * returns here. DATA (8 KiB) and the stack page are zeroed before each case.
 * Output, one line per case:   ok   or   sig SIGNAL code SI_CODE
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#define CODE 0x20000000ul
#define DATA 0x10000000ul
#define STACK_BASE 0x30000000ul
#define STACK (STACK_BASE + 0x1000)

uint64_t saved_rsp;
uint64_t case_regs[5]; /* RBX, RSI, RSP, RBP, RDI */
uint64_t code_address = CODE;
uint32_t default_mxcsr = 0x1F80;
static volatile int last_signal, last_code;

void run_case(void);
void resume_after_case(void);
__asm__(".globl run_case\n"
        "run_case:\n"
        "  push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
        "  mov %rsp, saved_rsp(%rip)\n"
        "  fninit\n"
        "  pcmpeqb %xmm1, %xmm1\n"
        "  pcmpeqb %mm1, %mm1\n"
        "  pushq $0x40202\n popfq\n" /* AC | IF: every access from here on is checked (all aligned) */
        "  mov case_regs(%rip), %rbx\n mov case_regs+8(%rip), %rsi\n mov case_regs+24(%rip), %rbp\n"
        "  mov case_regs+32(%rip), %rdi\n mov case_regs+16(%rip), %rsp\n"
        "  xor %eax, %eax\n xor %ecx, %ecx\n xor %edx, %edx\n"
        "  xor %r8d, %r8d\n xor %r9d, %r9d\n xor %r10d, %r10d\n xor %r11d, %r11d\n"
        "  xor %r12d, %r12d\n xor %r13d, %r13d\n xor %r14d, %r14d\n xor %r15d, %r15d\n"
        "  jmp *code_address(%rip)\n"
        ".globl resume_after_case\n"
        "resume_after_case:\n"
        "  mov saved_rsp(%rip), %rsp\n"
        "  pushfq\n andq $~0x40000, (%rsp)\n popfq\n"
        "  cld\n fninit\n ldmxcsr default_mxcsr(%rip)\n"
        "  pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"
        "  ret\n");

static void on_signal(int sig, siginfo_t *info, void *context)
{
    ucontext_t *uc = context;
    last_signal = sig;
    last_code = info->si_code;
    uc->uc_mcontext.gregs[REG_RIP] = (greg_t)(uintptr_t)resume_after_case;
    uc->uc_mcontext.gregs[REG_EFL] &= ~0x40000;
}

static void *map_fixed(unsigned long address, size_t size, int prot)
{
    void *p = mmap((void *)address, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(3);
    }
    return p;
}

int main(void)
{
    uint8_t *code = map_fixed(CODE, 8192, PROT_READ | PROT_WRITE | PROT_EXEC);
    map_fixed(DATA, 8192, PROT_READ | PROT_WRITE);
    map_fixed(STACK_BASE, 8192, PROT_READ | PROT_WRITE);
    static uint8_t alternate[65536];
    stack_t ss = {.ss_sp = alternate, .ss_size = sizeof alternate};
    sigaltstack(&ss, NULL);
    struct sigaction sa = {.sa_sigaction = on_signal, .sa_flags = SA_SIGINFO | SA_ONSTACK};
    sigfillset(&sa.sa_mask);
    int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};
    for (unsigned i = 0; i < sizeof signals / sizeof signals[0]; i++)
        sigaction(signals[i], &sa, NULL);

    char kind, hex[1024];
    unsigned offset;
    while (scanf(" %c %u %1000s", &kind, &offset, hex) == 3) {
        size_t n = strlen(hex) / 2;
        for (size_t i = 0; i < n; i++)
            sscanf(hex + 2 * i, "%2hhx", &code[i]);
        /* movabs $resume_after_case, %r11; jmp *%r11 */
        uint64_t back = (uint64_t)(uintptr_t)resume_after_case;
        code[n] = 0x49, code[n + 1] = 0xBB;
        memcpy(code + n + 2, &back, 8);
        code[n + 10] = 0x41, code[n + 11] = 0xFF, code[n + 12] = 0xE3;
        __builtin___clear_cache((char *)code, (char *)code + n + 13);
        memset((void *)DATA, 0, 8192);
        memset((void *)STACK_BASE, 0, 8192);
        uint64_t data = DATA + (kind == 'd' ? offset : 0), stack = STACK + (kind == 's' ? offset : 0);
        case_regs[0] = case_regs[1] = case_regs[4] = data;
        case_regs[2] = case_regs[3] = stack;
        last_signal = 0;
        run_case();
        if (last_signal)
            printf("sig %d code %d\n", last_signal, last_code);
        else
            printf("ok\n");
    }
    return 0;
}
