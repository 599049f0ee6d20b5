using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// The native oracle for inputs that fault: the bytes run in a forked child process, which reports
/// the exception each case raised (the vector and error code Linux records in the signal frame).
/// </summary>
public sealed unsafe partial class DifferentialRunner
{
    /// <summary>How one case ended natively: the signal (0 when the bytes ran to their end), the
    /// exception vector (-1 for none), its error code and the RIP it was raised at, as the kernel put
    /// them in the signal frame (sigcontext trapno, err, rip). Linux sends SIGBUS for #SS, SIGSEGV for
    /// #GP and #PF, SIGILL for #UD.</summary>
    public readonly record struct NativeEnd(int Signal, int Vector, long ErrorCode, ulong Rip)
    {
        public override string ToString() => Signal == 0 ? "no exception" : $"vector {Vector} error 0x{ErrorCode:x} at 0x{Rip:x} (signal {Signal})";
    }

    /// <summary>One case: all of it runs natively if it does not fault.</summary>
    public readonly record struct NativeCase(byte[] Code, X86Context Input);

    /// <summary>Runs one case natively in a child process; see the batch overload.</summary>
    public NativeEnd RunNativeInChild(ReadOnlySpan<byte> instruction, in X86Context input, ReadOnlySpan<byte> data, bool lowData = false) =>
        RunNativeInChild([new NativeCase(instruction.ToArray(), input)], data, lowData)[0];

    /// <summary>
    /// Runs each case natively, one after the other, in one forked child process: the data window is
    /// reset to <paramref name="data"/> and the case's context loaded before each; its bytes run at
    /// <see cref="CodeAddress"/> (as on the interpreter) followed by a jump back to the loop. The
    /// child handles SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP on an alternate stack (a case may
    /// leave RSP anywhere): the handler records the signal, vector and error code and resumes the
    /// loop. The child never returns to managed code and starts from the raw fork system call; it
    /// turns off core dumps and arms a 20-second alarm against a case that loops.
    /// </summary>
    public NativeEnd[] RunNativeInChild(IReadOnlyList<NativeCase> cases, ReadOnlySpan<byte> data, bool lowData = false)
    {
        int n = cases.Count;
        int ctxSize = sizeof(X86Context);
        int tableBytes = n * 16, ctxBytes = n * ctxSize, codeBytes = 0;
        foreach (var c in cases)
        {
            if (c.Code.Length > 0x700)
            {
                throw new ArgumentException("instruction sequence too long", nameof(cases));
            }
            codeBytes += c.Code.Length;
        }
        using var input = new NativeCode(tableBytes + ctxBytes + DataSize + codeBytes);
        using var results = new NativeCode(Math.Max(n * ResultSize, ResultSize), shared: true);
        using var stub = new NativeCode(16384);
        using var altStack = new NativeCode(64 * 1024);
        byte* table = input.Address, contexts = table + tableBytes, dataStage = contexts + ctxBytes, code = dataStage + DataSize;
        long offset = 0;
        for (int i = 0; i < n; i++)
        {
            ((long*)table)[2 * i] = offset;
            ((long*)table)[2 * i + 1] = cases[i].Code.Length;
            var ctx = cases[i].Input;
            ctx.Mxcsr = EffectiveMxcsr(ctx.Mxcsr);
            ((X86Context*)contexts)[i] = ctx;
            cases[i].Code.CopyTo(new Span<byte>(code + offset, cases[i].Code.Length));
            offset += cases[i].Code.Length;
        }
        data.CopyTo(new Span<byte>(dataStage, DataSize));
        _code.Bytes.Clear();
        BuildChildStub(stub, altStack, n, table, contexts, dataStage, code, results.Address);
        using (lowData ? s_lowDataLock.EnterScope() : default)
        {
            BuildChildWindow(stub, lowData ? LowWindow() : _data);
            stub.Call(0, null);
        }
        long forkResult = *(long*)(stub.Address + ScratchResult);
        if (forkResult < 0)
        {
            throw new InvalidOperationException($"fork or wait4 failed: errno {-forkResult}");
        }
        int status = *(int*)(stub.Address + ScratchStatus);
        var ends = new NativeEnd[n];
        for (int i = 0; i < n; i++)
        {
            byte* r = results.Address + ResultSize * i;
            int signal = *(int*)r;
            if (signal < 0 || (status & 0x7F) != 0)
            {
                throw new InvalidOperationException($"the child ended with status 0x{status:x} at case {i} of {n} ({Convert.ToHexString(cases[Math.Min(i, n - 1)].Code)})");
            }
            ends[i] = signal == 0 ? new NativeEnd(0, -1, 0, 0) : new NativeEnd(signal, *(int*)(r + 4), *(long*)(r + 8), *(ulong*)(r + 16));
        }
        return ends;
    }

    // Scratch in the stub page (the child's private copy): loop index, the last case's outcome, the
    // trailer that jumps back, sigaction structures, an empty signal set, the alternate stack_t.
    const int ScratchBase = 0x3000;
    const int ScratchStatus = ScratchBase, ScratchResult = ScratchBase + 8, ScratchIndex = ScratchBase + 16;
    const int ScratchSignal = ScratchBase + 24; // the last case's signal, vector, error code, RIP: as a result record
    const int ScratchTrailer = ScratchBase + 48, ScratchHandlerAction = ScratchBase + 64, ScratchDefaultAction = ScratchBase + 96;
    const int ScratchEmptySet = ScratchBase + 128, ScratchAltStack = ScratchBase + 144, ScratchWindow = ScratchBase + 176;

    /// <summary>Where the child copies the data before each case (set per call: the low window is shared).</summary>
    static void BuildChildWindow(NativeCode stub, NativeCode window) => *(ulong*)(stub.Address + ScratchWindow) = (ulong)window.Address;

    /// <summary>Per case in the shared results: signal, vector, error code, RIP.</summary>
    const int ResultSize = 24;

    // Linux x86-64 ABI: ucontext_t.uc_mcontext starts at byte 40; greg i at 40 + 8 i (REG_RSP 15,
    // REG_RIP 16, REG_EFL 17, REG_ERR 19, REG_TRAPNO 20).
    const int UcRsp = 40 + 15 * 8, UcRip = 40 + 16 * 8, UcEflags = 40 + 17 * 8, UcErr = 40 + 19 * 8, UcTrapno = 40 + 20 * 8;
    const int HostRspOffset = 16 * 8 + 8;

    void BuildChildStub(NativeCode stub, NativeCode altStack, int count, byte* table, byte* contexts, byte* dataStage, byte* code, byte* results)
    {
        ulong page = (ulong)stub.Address;
        ulong S(int offset) => page + (ulong)offset;
        var a = new Assembler(64);
        var child = a.CreateLabel();
        var waitAgain = a.CreateLabel();
        var done = a.CreateLabel();
        var next = a.CreateLabel();
        var caseDone = a.CreateLabel();
        var finish = a.CreateLabel();
        var handler = a.CreateLabel();
        var restorer = a.CreateLabel();
        var codeTarget = a.CreateLabel();

        // ---- parent: fork, wait for the child (again after EINTR), store the result
        a.push(rbx); a.push(rbp); a.push(r12); a.push(r13); a.push(r14); a.push(r15);
        a.mov(eax, 57); // fork
        a.syscall();
        a.test(rax, rax);
        a.jz(child);
        a.js(done);
        a.mov(r12, rax);
        a.Label(ref waitAgain);
        a.mov(rdi, r12); // wait4(pid, &status, 0, NULL)
        a.mov(rsi, S(ScratchStatus));
        a.xor(edx, edx);
        a.xor(r10d, r10d);
        a.mov(eax, 61);
        a.syscall();
        a.cmp(rax, -4);
        a.je(waitAgain);
        a.Label(ref done);
        a.mov(rcx, S(ScratchResult));
        a.mov(__qword_ptr[rcx], rax);
        a.pop(r15); a.pop(r14); a.pop(r13); a.pop(r12); a.pop(rbp); a.pop(rbx);
        a.ret();

        // ---- child: no core file, signal handling on an alternate stack, alarm
        a.Label(ref child);
        a.mov(eax, 157); // prctl(PR_SET_DUMPABLE, 0)
        a.mov(edi, 4);
        a.xor(esi, esi);
        a.syscall();
        a.mov(rdi, S(ScratchAltStack)); // stack_t { ss_sp, ss_flags = 0, ss_size }
        a.mov(rax, (ulong)altStack.Address);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(__qword_ptr[rdi + 8], 0);
        a.mov(__qword_ptr[rdi + 16], altStack.Size);
        a.xor(esi, esi);
        a.mov(eax, 131); // sigaltstack(&ss, NULL)
        a.syscall();
        a.mov(rdi, S(ScratchHandlerAction)); // { handler, SA_SIGINFO | SA_ONSTACK | SA_RESTORER, restorer, mask 0 }
        a.lea(rax, __[handler]);
        a.mov(__qword_ptr[rdi], rax);
        a.mov(eax, 0x0C00_0004);
        a.mov(__qword_ptr[rdi + 8], rax);
        a.lea(rax, __[restorer]);
        a.mov(__qword_ptr[rdi + 16], rax);
        foreach (int signal in new[] { 4, 5, 7, 8, 11 }) // SIGILL SIGTRAP SIGBUS SIGFPE SIGSEGV
        {
            a.mov(eax, 13); // rt_sigaction(signal, &act, NULL, 8)
            a.mov(edi, signal);
            a.mov(rsi, S(ScratchHandlerAction));
            a.xor(edx, edx);
            a.mov(r10d, 8);
            a.syscall();
        }
        a.mov(eax, 13); // SIGALRM: the default action (the zeroed structure)
        a.mov(edi, 14);
        a.mov(rsi, S(ScratchDefaultAction));
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        a.mov(eax, 14); // rt_sigprocmask(SIG_SETMASK, &{}, NULL, 8)
        a.mov(edi, 2);
        a.mov(rsi, S(ScratchEmptySet));
        a.xor(edx, edx);
        a.mov(r10d, 8);
        a.syscall();
        a.mov(eax, 37); // alarm(20)
        a.mov(edi, 20);
        a.syscall();
        a.mov(rdi, S(ScratchTrailer)); // the trailer after each case: jmp [rip + 0]; dq caseDone
        a.mov(__word_ptr[rdi], 0x25FF);
        a.mov(__dword_ptr[rdi + 2], 0);
        a.lea(rax, __[caseDone]);
        a.mov(__qword_ptr[rdi + 6], rax);

        // ---- the loop over cases
        a.Label(ref next);
        a.mov(rcx, S(ScratchIndex));
        a.mov(rcx, __qword_ptr[rcx]);
        a.cmp(rcx, count);
        a.jae(finish);
        a.cld();
        a.mov(rsi, (ulong)dataStage); // the data window as given
        a.mov(rax, S(ScratchWindow));
        a.mov(rdi, __qword_ptr[rax]);
        a.mov(ecx, DataSize);
        a.rep.movsb();
        a.mov(rax, S(ScratchIndex)); // the case's context into *_ctx
        a.mov(rax, __qword_ptr[rax]);
        a.imul(rax, rax, sizeof(X86Context));
        a.mov(rsi, (ulong)contexts);
        a.add(rsi, rax);
        a.mov(rdi, (ulong)_ctx);
        a.mov(ecx, sizeof(X86Context));
        a.rep.movsb();
        a.mov(rax, S(ScratchIndex)); // its bytes to CodeAddress, then the trailer
        a.mov(rax, __qword_ptr[rax]);
        a.shl(rax, 4);
        a.mov(rdx, (ulong)table);
        a.add(rdx, rax);
        a.mov(rsi, (ulong)code);
        a.add(rsi, __qword_ptr[rdx]);
        a.mov(rcx, __qword_ptr[rdx + 8]);
        a.mov(rdi, CodeAddress);
        a.rep.movsb();
        a.mov(rsi, S(ScratchTrailer));
        a.mov(ecx, 14);
        a.rep.movsb();
        a.mov(rax, S(ScratchSignal));
        a.mov(__dword_ptr[rax], 0);
        a.mov(__dword_ptr[rax + 4], -1);
        a.mov(__qword_ptr[rax + 8], 0);
        a.mov(__qword_ptr[rax + 16], 0);
        EmitContextLoad(a);
        a.jmp(__qword_ptr[codeTarget]);
        a.Label(ref codeTarget);
        a.dq(CodeAddress);

        a.Label(ref caseDone); // from the trailer, or from the handler with RSP already restored
        a.mov(rax, (ulong)_ctx);
        a.mov(rsp, __qword_ptr[rax + HostRspOffset]);
        a.cld();
        a.mov(rax, S(ScratchIndex));
        a.mov(rcx, __qword_ptr[rax]);
        a.imul(rdx, rcx, ResultSize);
        a.mov(rax, (ulong)results);
        a.add(rdx, rax);
        a.mov(rax, S(ScratchSignal));
        a.mov(esi, __dword_ptr[rax]);
        a.mov(__dword_ptr[rdx], esi);
        a.mov(esi, __dword_ptr[rax + 4]);
        a.mov(__dword_ptr[rdx + 4], esi);
        a.mov(rsi, __qword_ptr[rax + 8]);
        a.mov(__qword_ptr[rdx + 8], rsi);
        a.mov(rsi, __qword_ptr[rax + 16]);
        a.mov(__qword_ptr[rdx + 16], rsi);
        a.inc(rcx);
        a.mov(rax, S(ScratchIndex));
        a.mov(__qword_ptr[rax], rcx);
        a.jmp(next);

        a.Label(ref finish);
        a.mov(eax, 231); // exit_group(0)
        a.xor(edi, edi);
        a.syscall();

        // ---- handler(signal = EDI, info = RSI, ucontext = RDX): record, resume at caseDone
        a.Label(ref handler);
        a.mov(rax, S(ScratchSignal));
        a.mov(__dword_ptr[rax], edi);
        a.mov(rcx, __qword_ptr[rdx + UcTrapno]);
        a.mov(__dword_ptr[rax + 4], ecx);
        a.mov(rcx, __qword_ptr[rdx + UcErr]);
        a.mov(__qword_ptr[rax + 8], rcx);
        a.mov(rcx, __qword_ptr[rdx + UcRip]);
        a.mov(__qword_ptr[rax + 16], rcx);
        a.lea(rax, __[caseDone]);
        a.mov(__qword_ptr[rdx + UcRip], rax);
        a.mov(rax, (ulong)_ctx);
        a.mov(rax, __qword_ptr[rax + HostRspOffset]);
        a.mov(__qword_ptr[rdx + UcRsp], rax);
        a.mov(__qword_ptr[rdx + UcEflags], 0x202);
        a.ret();
        a.Label(ref restorer);
        a.mov(eax, 15); // rt_sigreturn
        a.syscall();

        byte[] bytes = Assemble(a, page);
        if (bytes.Length > ScratchBase)
        {
            throw new InvalidOperationException("child stub too long");
        }
        bytes.CopyTo(stub.Bytes);
        // The results start as "did not finish" (-1): a child that dies mid-way leaves them so.
        new Span<int>(results, count * ResultSize / 4).Fill(-1);
    }
}
