using System.Runtime.Intrinsics;
using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// Runs one instruction (or a short sequence) natively on the host CPU and on SharpVisor's
/// interpreter from the same registers, flags and memory, and reports every difference.
/// </summary>
/// <remarks>
/// Natively the bytes run inside a stub that loads all 16 GPRs and RFLAGS from an
/// <see cref="X86Context"/>, executes them, and stores the state back. On the interpreter side a
/// 64-bit user-mode (CPL 3) vCPU maps the same virtual pages — the stub's code page, a data
/// window and a stack window — so addresses in registers mean the same thing on both sides.
/// Inputs that would fault natively (e.g. a divide by zero, or a misaligned access with EFLAGS.AC
/// set: CR0.AM is set on both sides) must not be generated for <see cref="Run"/>: a host fault in the
/// stub kills the test process. <see cref="RunNativeInChild"/> runs such inputs in a forked child
/// process and reports the signal it ended with.
/// A second data window lies at <see cref="LowDataAddress"/>, the last page below 4 GiB, for
/// instructions with a 32-bit address size (67H in 64-bit mode), including wrap-around at 2^32.
/// </remarks>
public sealed unsafe partial class DifferentialRunner : IDisposable
{
    public const int DataSize = 4096;
    const int CodeOffset = 0x800;   // where the instruction under test sits in the native page
    const ulong GuestDataPa = 0x10_0000, GuestLowDataPa = 0x18_0000, GuestStackPa = 0x20_0000, GuestCodePa = 0x30_0000, PageTablesPa = 0x40_0000;
    /// <summary>Host and guest address of the low data window: the last page below 4 GiB.</summary>
    public const ulong LowDataAddress = 0xFFFF_F000;

    readonly NativeCode _code = new(8192);
    readonly NativeCode _data = new(DataSize);
    /// <summary>
    /// The low window exists once per process (it has a fixed address) and test classes run in
    /// parallel, each with its own runner: a native run through it holds <see cref="s_lowDataLock"/>.
    /// </summary>
    static NativeCode? s_lowData;
    static readonly Lock s_lowDataLock = new();
    readonly NativeCode _stack = new(8192);
    readonly X86Context* _ctx = (X86Context*)System.Runtime.InteropServices.NativeMemory.AllocZeroed((nuint)sizeof(X86Context));
    /// <summary>FXSAVE area for the host's x87/SSE state around the test (FXSAVE needs 16-byte alignment).</summary>
    readonly byte* _hostFpu = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(512, 64);
    readonly GuestMemory _ram = new(8 << 20);
    readonly Cpu _cpu;
    ulong _nextTable = PageTablesPa;

    public DifferentialRunner()
    {
        var platform = new CpuPlatform { Memory = new PhysicalMemoryMap(_ram), Ports = new PortBus(), Clock = new VirtualClock(ClockMode.Deterministic) };
        _cpu = new Cpu(0, platform);
        ulong pml4 = AllocTable();
        Map(pml4, (ulong)_code.Address, GuestCodePa, 2);
        Map(pml4, (ulong)_data.Address, GuestDataPa, 1);
        Map(pml4, LowDataAddress, GuestLowDataPa, 1);
        Map(pml4, (ulong)_stack.Address, GuestStackPa, 2);
        CpuSetup.EnterLongModeUser(_cpu, pml4);
        _cpu.Cr4Value |= X86.Cr4.OSFXSR | X86.Cr4.OSXMMEXCPT;
        // CR0.AM as Linux sets it for the host: a case that sets EFLAGS.AC is alignment checked on both sides.
        _cpu.Cr0Value |= X86.Cr0.AM;
        _cpu.UpdateMode();
    }

    /// <summary>The MXCSR the native side runs with: 0 means the default; exceptions always masked.</summary>
    public static uint EffectiveMxcsr(uint mxcsr) => (mxcsr == 0 ? 0x1F80u : mxcsr & 0xFFFF) | 0x1F80;

    /// <summary>Host/guest address of the data window (4 KiB, the same on both sides).</summary>
    public ulong DataAddress => (ulong)_data.Address;
    /// <summary>Top of a stack window with room for pushes (the stub keeps the host stack elsewhere).</summary>
    public ulong StackTop => (ulong)_stack.Address + 4096;
    public ulong CodeAddress => (ulong)_code.Address + CodeOffset;
    public Cpu Cpu => _cpu;

    ulong AllocTable()
    {
        ulong t = _nextTable;
        _nextTable += 4096;
        return t;
    }

    void Map(ulong pml4, ulong va, ulong pa, int pages)
    {
        for (int i = 0; i < pages; i++, va += 4096, pa += 4096)
        {
            ulong table = pml4;
            for (int level = 3; level >= 1; level--)
            {
                ulong entryAddr = table + ((va >> (12 + 9 * level)) & 0x1FF) * 8;
                ulong entry = _ram.ReadU64(entryAddr);
                if ((entry & 1) == 0)
                {
                    entry = AllocTable() | 7; // present, writable, user
                    _ram.WriteU64(entryAddr, entry);
                }
                table = entry & ~0xFFFUL;
            }
            _ram.WriteU64(table + ((va >> 12) & 0x1FF) * 8, pa | 7);
        }
    }

    /// <summary>Outcome of running one test case on both sides.</summary>
    public readonly record struct Outcome(X86Context Native, X86Context Emulated, byte[] NativeData, byte[] EmulatedData, ulong EmulatedRip, int? EmulatedException);

    /// <summary>
    /// Runs <paramref name="instruction"/> (machine code, no branches out of the sequence) from
    /// <paramref name="input"/> with the data window initialised to <paramref name="data"/>; the data
    /// window is the one at <see cref="LowDataAddress"/> when <paramref name="lowData"/>.
    /// </summary>
    public Outcome Run(ReadOnlySpan<byte> instruction, in X86Context input, ReadOnlySpan<byte> data, bool lowData = false)
    {
        if (instruction.Length > 0x700)
        {
            throw new ArgumentException("instruction sequence too long", nameof(instruction));
        }
        // ---- native
        BuildStub(instruction);
        *_ctx = input;
        _ctx->Mxcsr = EffectiveMxcsr(input.Mxcsr);
        byte[] nativeData;
        using (lowData ? s_lowDataLock.EnterScope() : default)
        {
            var window = lowData ? LowWindow() : _data;
            data.CopyTo(window.Bytes);
            _code.Call(0, _ctx);
            nativeData = window.Bytes[..DataSize].ToArray();
        }
        var native = *_ctx;

        // x87/MMX: as the stub's MOVQ mm loads leave it (the interpreter-only path keeps the x87 state as set)
        for (int i = 0; i < 8; i++)
        {
            _cpu.Fpu.Mantissa[i] = input.Mm[i]; // as the native MOVQ mm loads: TOP 0, all valid
            _cpu.Fpu.SignExp[i] = 0xFFFF;
        }
        _cpu.Fpu.Top = 0;
        _cpu.Fpu.Tag = 0;
        _cpu.Fpu.Control = FpuState.InitControl; // the host thread's FCW (System V ABI: 037FH), not the power-on 0040H
        var same = input;
        same.Mxcsr = _ctx->Mxcsr; // the interpreter runs with exactly the native MXCSR
        var (emulated, emulatedData, rip, exception) = RunInterpreter(instruction, same, data, lowData);
        return new Outcome(native, emulated, nativeData, emulatedData, rip, exception);
    }

    /// <summary>The low data window, mapped on first use (callers hold <see cref="s_lowDataLock"/>).</summary>
    static NativeCode LowWindow() => s_lowData ??= new NativeCode(LowDataAddress, DataSize);

    /// <summary>
    /// Runs the bytes on the interpreter only (for cases that would fault natively: alignment #GP,
    /// #UD/#NM from CR0/CR4 settings, unmasked SIMD exceptions: MXCSR is used as given). Returns the state, data window, RIP and any exception vector.
    /// </summary>
    public (X86Context State, byte[] Data, ulong Rip, int? Exception) RunInterpreter(ReadOnlySpan<byte> instruction, in X86Context input, ReadOnlySpan<byte> data, bool lowData = false)
    {
        ulong dataPa = lowData ? GuestLowDataPa : GuestDataPa;
        data.CopyTo(_ram.GetSpan(dataPa, DataSize));
        _ram.TryWrite(GuestCodePa + CodeOffset, instruction); // through TryWrite: invalidates cached blocks
        _ram.TryWrite(GuestCodePa + CodeOffset + (ulong)instruction.Length, [0x0F, 0x0B]); // UD2 fence
        for (int i = 0; i < 16; i++)
        {
            _cpu.Regs.Gpr[i] = input.Gpr[i];
        }
        _cpu.SetFlags(input.Rflags);
        for (int i = 0; i < 16; i++)
        {
            _cpu.Fpu.Xmm[i] = System.Runtime.Intrinsics.Vector128.Create(input.XmmLow(i), input.XmmHigh(i)).AsByte();
        }
        _cpu.Fpu.Mxcsr = input.Mxcsr == 0 ? 0x1F80u : input.Mxcsr; // unmasked exceptions are allowed here
        _cpu.Rip = CodeAddress;
        ulong end = CodeAddress + (ulong)instruction.Length;
        var start = _cpu.SaveState();
        byte[] memoryBefore = GuestWindows();
        // A test may poke the vCPU into a state no CPU reaches (an x87 register whose tag contradicts its
        // value); such a state cannot be restored, so that case runs interpreted only.
        bool restorable = CheckTranslation && Restorable(start);
        var interpreted = RunTier(end, dataPa, translated: false);
        if (restorable)
        {
            // The same case again from the same state, translated: it must end exactly as interpreted.
            RestoreGuestWindows(memoryBefore);
            _cpu.RestoreState(start);
            var translatedRun = RunTier(end, dataPa, translated: true);
            string? difference = TierDifference(interpreted, translatedRun);
            if (difference != null)
            {
                throw new TierMismatchException($"translated code differs from the interpreter on {Convert.ToHexString(instruction)}: {difference}");
            }
        }
        return (interpreted.State, interpreted.Data, interpreted.Rip, interpreted.Exception);
    }

    /// <summary>
    /// Also run every case translated (<see cref="Translation.BlockCompiler"/>) and require the outcome the
    /// interpreter had — registers, flags, SSE/MMX state, the data and stack windows, RIP and exception —
    /// so each differential test checks the interpreter against the host and the translator against the
    /// interpreter. On unless a test turns it off.
    /// </summary>
    public bool CheckTranslation { get; set; } = true;

    bool Restorable(X86.State.CpuState state)
    {
        try
        {
            _cpu.RestoreState(state);
            return true;
        }
        catch (InvalidStateException)
        {
            return false;
        }
    }

    readonly record struct TierOutcome(X86Context State, byte[] Data, byte[] Windows, ulong Rip, int? Exception);

    /// <summary>Interpreted: one instruction at a time. Translated: whole blocks, up to the UD2 fence
    /// after the case (its #UD exactly at the end is the fence, not an exception of the case).</summary>
    TierOutcome RunTier(ulong end, ulong dataPa, bool translated)
    {
        int? exception = null;
        for (int steps = 0; steps < 1000 && _cpu.Rip != end; steps++)
        {
            exception = translated ? _cpu.RunBlockForTest(translated: true) : _cpu.StepForTest();
            if (exception != null)
            {
                if (translated && exception == Vector.UD && _cpu.Rip == end)
                {
                    exception = null;
                }
                break;
            }
        }
        return new TierOutcome(Capture(), _ram.GetSpan(dataPa, DataSize).ToArray(), GuestWindows(), _cpu.Rip, exception);
    }

    /// <summary>The guest pages a case can write: both data windows and the stack.</summary>
    byte[] GuestWindows() =>
        [.. _ram.GetSpan(GuestDataPa, DataSize), .. _ram.GetSpan(GuestLowDataPa, DataSize), .. _ram.GetSpan(GuestStackPa, 2 * DataSize)];

    void RestoreGuestWindows(byte[] saved)
    {
        _ram.TryWrite(GuestDataPa, saved.AsSpan(0, DataSize));
        _ram.TryWrite(GuestLowDataPa, saved.AsSpan(DataSize, DataSize));
        _ram.TryWrite(GuestStackPa, saved.AsSpan(2 * DataSize, 2 * DataSize));
    }

    static string? TierDifference(TierOutcome interpretedRun, TierOutcome translatedRun)
    {
        var interpreted = interpretedRun;
        var translated = translatedRun;
        X86Context a = interpreted.State, b = translated.State; // locals: fixed buffers are read through them
        if (interpreted.Exception != translated.Exception)
        {
            return $"exception {Show(interpreted.Exception)} interpreted, {Show(translated.Exception)} translated";
        }
        if (interpreted.Rip != translated.Rip)
        {
            return $"RIP 0x{interpreted.Rip:x} interpreted, 0x{translated.Rip:x} translated";
        }
        for (int i = 0; i < 16; i++)
        {
            if (a.Gpr[i] != b.Gpr[i])
            {
                return $"GPR {i}: 0x{a.Gpr[i]:x} interpreted, 0x{b.Gpr[i]:x} translated";
            }
        }
        if (a.Rflags != b.Rflags)
        {
            return $"RFLAGS 0x{a.Rflags:x} interpreted, 0x{b.Rflags:x} translated";
        }
        if (!interpreted.Windows.AsSpan().SequenceEqual(translated.Windows))
        {
            return "guest memory (data or stack windows) differs";
        }
        for (int i = 0; i < 16; i++)
        {
            if (a.XmmLow(i) != b.XmmLow(i) || a.XmmHigh(i) != b.XmmHigh(i))
            {
                return $"XMM{i} differs";
            }
        }
        for (int i = 0; i < 8; i++)
        {
            if (a.Mm[i] != b.Mm[i])
            {
                return $"MM{i} differs";
            }
        }
        return a.Mxcsr != b.Mxcsr ? "MXCSR differs" : null;

        static string Show(int? vector) => vector is { } v ? v.ToString() : "none";
    }

    X86Context Capture()
    {
        var emulated = default(X86Context);
        for (int i = 0; i < 16; i++)
        {
            emulated.Gpr[i] = _cpu.Regs.Gpr[i];
        }
        emulated.Rflags = _cpu.GetFlags();
        for (int i = 0; i < 16; i++)
        {
            var x = _cpu.Fpu.Xmm[i].AsUInt64();
            emulated.SetXmm(i, x.GetElement(0), x.GetElement(1));
        }
        emulated.Mxcsr = _cpu.Fpu.Mxcsr;
        for (int i = 0; i < 8; i++)
        {
            emulated.Mm[i] = _cpu.Fpu.Mantissa[i];
        }
        return emulated;
    }

    /// <summary>
    /// The native stub: save callee-saved registers and the host RSP, load the context, run the
    /// bytes at <see cref="CodeOffset"/>, store the context, restore and return (SysV ABI).
    /// </summary>
    void BuildStub(ReadOnlySpan<byte> instruction)
    {
        ulong ctx = (ulong)_ctx;
        var pre = new Assembler(64);
        pre.push(rbx); pre.push(rbp); pre.push(r12); pre.push(r13); pre.push(r14); pre.push(r15);
        pre.mov(rax, (ulong)_hostFpu);
        pre.fxsave64(__[rax]);
        EmitContextLoad(pre);
        byte[] preBytes = Assemble(pre, (ulong)_code.Address);
        var post = new Assembler(64);
        post.mov(__qword_ptr[ctx], rax);
        post.mov(rax, ctx);
        AssemblerRegister64[] regs = [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15];
        AssemblerRegisterXMM[] xmms = [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];
        AssemblerRegisterMM[] mms = [mm0, mm1, mm2, mm3, mm4, mm5, mm6, mm7];
        for (int i = 1; i < 16; i++)
        {
            post.mov(__qword_ptr[rax + i * 8], regs[i]);
        }
        post.pushfq();
        post.pop(__qword_ptr[rax + 16 * 8]);
        for (int i = 0; i < 16; i++)
        {
            post.movdqu(__xmmword_ptr[rax + X86Context.XmmOffset + i * 16], xmms[i]);
        }
        post.stmxcsr(__dword_ptr[rax + X86Context.MxcsrOffset]);
        for (int i = 0; i < 8; i++)
        {
            post.movq(__qword_ptr[rax + X86Context.MmOffset + i * 8], mms[i]);
        }
        post.mov(rsp, __qword_ptr[rax + 16 * 8 + 8]);
        post.mov(rax, (ulong)_hostFpu);
        post.fxrstor64(__[rax]); // the host's x87 state and MXCSR exactly as before
        post.cld();
        post.pushfq();
        post.and(__qword_ptr[rsp], ~(int)RFlags.AC); // .NET must not run with alignment checks on
        post.popfq();
        post.pop(r15); post.pop(r14); post.pop(r13); post.pop(r12); post.pop(rbp); post.pop(rbx);
        post.ret();

        var span = _code.Bytes;
        span.Clear();
        if (preBytes.Length + 5 > CodeOffset)
        {
            throw new InvalidOperationException("stub prologue too long");
        }
        preBytes.CopyTo(span);
        // jmp rel32 from the prologue to the instruction under test
        int jmpAt = preBytes.Length;
        span[jmpAt] = 0xE9;
        BitConverter.TryWriteBytes(span[(jmpAt + 1)..], CodeOffset - (jmpAt + 5));
        instruction.CopyTo(span[CodeOffset..]);
        ulong postAt = (ulong)_code.Address + CodeOffset + (ulong)instruction.Length;
        Assemble(post, postAt).CopyTo(span[(CodeOffset + instruction.Length)..]);
    }

    /// <summary>
    /// Loads the context at <see cref="_ctx"/>: XMM, MXCSR, MMX, then (after saving the host RSP in
    /// the context) RFLAGS, RSP and the GPRs, RAX last; only MOVs follow the POPFQ.
    /// </summary>
    void EmitContextLoad(Assembler a)
    {
        a.mov(rax, (ulong)_ctx);
        AssemblerRegisterXMM[] xmms = [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];
        for (int i = 0; i < 16; i++)
        {
            a.movdqu(xmms[i], __xmmword_ptr[rax + X86Context.XmmOffset + i * 16]);
        }
        a.ldmxcsr(__dword_ptr[rax + X86Context.MxcsrOffset]);
        AssemblerRegisterMM[] mms = [mm0, mm1, mm2, mm3, mm4, mm5, mm6, mm7];
        for (int i = 0; i < 8; i++)
        {
            a.movq(mms[i], __qword_ptr[rax + X86Context.MmOffset + i * 8]);
        }
        a.mov(__qword_ptr[rax + 16 * 8 + 8], rsp);
        a.push(__qword_ptr[rax + 16 * 8]); // through the host stack: the case's RSP may be unusable
        a.popfq();
        a.mov(rsp, __qword_ptr[rax + 4 * 8]);
        AssemblerRegister64[] regs = [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15];
        for (int i = 15; i >= 1; i--)
        {
            if (i != 4)
            {
                a.mov(regs[i], __qword_ptr[rax + i * 8]);
            }
        }
        a.mov(rax, __qword_ptr[rax]);
    }

    static byte[] Assemble(Assembler a, ulong ip)
    {
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), ip);
        return ms.ToArray();
    }

    public void Dispose()
    {
        _code.Dispose();
        _data.Dispose();
        _stack.Dispose();
        System.Runtime.InteropServices.NativeMemory.Free(_ctx);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_hostFpu);
        _ram.Dispose();
    }
}

/// <summary>The translated tier ended a differential case differently from the interpreter.</summary>
public sealed class TierMismatchException(string message) : Exception(message);
