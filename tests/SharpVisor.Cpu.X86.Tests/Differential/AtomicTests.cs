using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Tests.Harness;
using static SharpVisor.Cpu.X86.Tests.Differential.AluTests;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// CMPXCHG (register and memory, LOCK and not), CMPXCHG8B, CMPXCHG16B and XADD against the host,
/// every width, with the comparison succeeding about half the time. All flags are defined for
/// CMPXCHG/XADD; CMPXCHG8B/16B change only ZF (so every flag is compared).
/// </summary>
public unsafe class AtomicTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public AtomicTests(RunnerFixture f) => _runner = f.Runner;

    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) ? n : 40;

    [Fact]
    public void CmpxchgMatchesTheHost()
    {
        var t = new DiffCase(_runner, 21);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            for (int i = 0; i < Iterations; i++)
            {
                var ctx = t.RandomContext();
                var data = t.RandomData();
                bool mem = i % 2 == 1;
                bool equal = t.Rng.Next(2) == 0;
                var code = Parse($"Cmpxchg_rm{bits}_r{bits}");
                Instruction ins;
                if (mem)
                {
                    int disp = t.Rng.Next(DifferentialRunner.DataSize - 8);
                    if (equal) unsafe { BitConverter.GetBytes(ctx.Gpr[0]).AsSpan(0, bits / 8).CopyTo(data.AsSpan(disp)); }
                    ins = Instruction.Create(code, new MemoryOperand(Register.RBX, disp), Pick(t, bits));
                    ins.HasLockPrefix = t.Rng.Next(2) == 0;
                }
                else
                {
                    var dst = Pick(t, bits);
                    if (equal && dst is not (Register.AH or Register.CH or Register.DH))
                    {
                        unsafe { ctx.Gpr[(int)dst.GetFullRegister() - (int)Register.RAX] = ctx.Gpr[0]; }
                    }
                    ins = Instruction.Create(code, dst, Pick(t, bits));
                }
                string diff = t.Check(t.Encode(ins), ctx, data, DiffCase.ArithFlags, $"cmpxchg{bits} {(mem ? "mem" : "reg")} lock={ins.HasLockPrefix} equal={equal}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void XaddMatchesTheHost()
    {
        var t = new DiffCase(_runner, 22);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            for (int i = 0; i < Iterations; i++)
            {
                bool mem = i % 2 == 1;
                var code = Parse($"Xadd_rm{bits}_r{bits}");
                var ins = mem ? Instruction.Create(code, Mem(t, bits), Pick(t, bits)) : Instruction.Create(code, Pick(t, bits), Pick(t, bits));
                ins.HasLockPrefix = mem && t.Rng.Next(2) == 0;
                string diff = t.Check(t.Encode(ins), t.RandomContext(), t.RandomData(), DiffCase.ArithFlags, $"xadd{bits} {(mem ? "mem" : "reg")} lock={ins.HasLockPrefix}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Theory]
    [InlineData(8), InlineData(16)]
    public void WideCompareExchangeMatchesTheHost(int bytes)
    {
        var t = new DiffCase(_runner, 23 + bytes);
        var failures = new List<string>();
        for (int i = 0; i < Iterations; i++)
        {
            var ctx = t.RandomContext();
            var data = t.RandomData();
            int disp = bytes == 16 ? t.Rng.Next(DifferentialRunner.DataSize / 16) * 16 : t.Rng.Next(DifferentialRunner.DataSize - 8);
            if (t.Rng.Next(2) == 0)
            {
                unsafe
                {
                    // Make the comparison succeed: memory = rDX:rAX.
                    if (bytes == 8)
                    {
                        BitConverter.GetBytes((uint)ctx.Gpr[0]).CopyTo(data, disp);
                        BitConverter.GetBytes((uint)ctx.Gpr[2]).CopyTo(data, disp + 4);
                    }
                    else
                    {
                        BitConverter.GetBytes(ctx.Gpr[0]).CopyTo(data, disp);
                        BitConverter.GetBytes(ctx.Gpr[2]).CopyTo(data, disp + 8);
                    }
                }
            }
            var ins = Instruction.Create(bytes == 8 ? Code.Cmpxchg8b_m64 : Code.Cmpxchg16b_m128, new MemoryOperand(Register.RBX, disp));
            ins.HasLockPrefix = t.Rng.Next(2) == 0;
            string diff = t.Check(t.Encode(ins), ctx, data, DiffCase.ArithFlags, $"cmpxchg{bytes * 8}b lock={ins.HasLockPrefix}");
            if (diff.Length > 0) failures.Add(diff);
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void FailedCmpxchgLeavesA32BitRegisterDestinationWhole()
    {
        // The SDM pseudo-code writes DEST ← TEMP on a failed compare, but for a register destination
        // neither Intel (Xeon) nor AMD (EPYC) hosts write it: bits 63:32 stay, while RAX takes TEMP
        // zero-extended. The ring-3 instruction test found the difference (issue 16).
        using var m = new InterpreterMachine();
        m.Load(Instruction.Create(Code.Cmpxchg_rm32_r32, Register.ECX, Register.EDX));
        m.Cpu.Regs.Gpr[0] = 0xAAAA_AAAA_0000_0001;
        m.Cpu.Regs.Gpr[1] = 0xBBBB_BBBB_0000_0002;
        Assert.Null(m.Run());
        Assert.Equal(0xBBBB_BBBB_0000_0002UL, m.Cpu.Regs.Gpr[1]);
        Assert.Equal(0x2UL, m.Cpu.Regs.Gpr[0]);
        Assert.False(m.Cpu.ZF());
    }

    [Fact]
    public void MisalignedCmpxchg16bIsGeneralProtection()
    {
        using var m = new InterpreterMachine();
        var ins = Instruction.Create(Code.Cmpxchg16b_m128, new MemoryOperand(Register.RBX, 8));
        ins.HasLockPrefix = true;
        m.Load(ins);
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        Assert.Equal<int?>(Vector.GP, m.Run());
        Assert.Equal(InterpreterMachine.CodeAddress, m.Cpu.Rip);
    }

    [Fact]
    public void UnlockedCmpxchgWritesTheDestinationEvenOnFailure()
    {
        // SDM CMPXCHG: "the destination operand is written back if the comparison fails" — so a
        // read-only destination faults whatever the outcome.
        using var m = new InterpreterMachine(cpl: 3);
        m.MakeReadOnly(InterpreterMachine.DataAddress);
        m.Load(Instruction.Create(Code.Cmpxchg_rm32_r32, new MemoryOperand(Register.RBX), Register.ECX));
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        m.Ram.WriteU32(InterpreterMachine.DataAddress, 5);
        m.Cpu.Regs.Gpr[0] = 6; // differs: the comparison fails
        Assert.Equal<int?>(Vector.PF, m.Run());
        Assert.Equal(6UL, m.Cpu.Regs.Gpr[0]); // no register change when the write faults
        Assert.Equal(InterpreterMachine.DataAddress, m.Cpu.Cr2);
    }

    /// <summary>
    /// Two vCPUs on two host threads run the same loop <paramref name="n"/> times (ESI counts down)
    /// against one shared location at DataAddress (RDI); a lost update would leave the total short.
    /// </summary>
    static InterpreterMachine RunOnTwoThreads(Action<Assembler, Label> body, int n)
    {
        var m1 = new InterpreterMachine();
        var cpus = new[] { m1.Cpu, new Cpu(1, m1.Cpu.Platform) };
        CpuSetup.EnterLongMode(cpus[1], m1.Cpu.Cr3);
        var a = new Assembler(64);
        var loop = a.CreateLabel();
        a.Label(ref loop);
        body(a, loop);
        a.dec(AssemblerRegisters.esi);
        a.jnz(loop);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), InterpreterMachine.CodeAddress);
        m1.LoadBytes(ms.ToArray());
        ulong end = m1.End;
        var threads = cpus.Select(c => new Thread(() =>
        {
            c.Rip = InterpreterMachine.CodeAddress;
            c.Regs.Gpr[7] = InterpreterMachine.DataAddress;
            c.Regs.Gpr[6] = (ulong)n;
            c.Regs.Gpr[1] = 1;
            while (c.Rip != end && c.StepForTest() == null)
            {
            }
        })).ToArray();
        foreach (var th in threads) th.Start();
        foreach (var th in threads) th.Join();
        Assert.All(cpus, c => Assert.Equal(end, c.Rip));
        return m1;
    }

    const int ThreadIterations = 20000;

    [Fact]
    public void LockedCmpxchgIsAtomicAcrossThreads()
    {
        using var m = RunOnTwoThreads((a, loop) =>
        {
            // mov eax,[rdi]; lea ecx,[rax+1]; lock cmpxchg [rdi],ecx; jne loop
            a.mov(AssemblerRegisters.eax, AssemblerRegisters.__dword_ptr[AssemblerRegisters.rdi]);
            a.lea(AssemblerRegisters.ecx, AssemblerRegisters.__[AssemblerRegisters.rax + 1]);
            a.@lock.cmpxchg(AssemblerRegisters.__dword_ptr[AssemblerRegisters.rdi], AssemblerRegisters.ecx);
            a.jne(loop);
        }, ThreadIterations);
        Assert.Equal((uint)(2 * ThreadIterations), m.Ram.ReadU32(InterpreterMachine.DataAddress));
    }

    [Fact]
    public void LockedXaddIsAtomicAcrossThreads()
    {
        using var m = RunOnTwoThreads((a, loop) =>
        {
            // mov ecx,1; lock xadd [rdi],ecx
            a.mov(AssemblerRegisters.ecx, 1);
            a.@lock.xadd(AssemblerRegisters.__dword_ptr[AssemblerRegisters.rdi], AssemblerRegisters.ecx);
        }, ThreadIterations);
        Assert.Equal((uint)(2 * ThreadIterations), m.Ram.ReadU32(InterpreterMachine.DataAddress));
    }

    [Fact]
    public void Cmpxchg16bIsAtomicAcrossThreads()
    {
        // Both halves are incremented together by a CMPXCHG16B retry loop: a torn or lost update
        // would leave them short or different.
        using var m = RunOnTwoThreads((a, loop) =>
        {
            a.mov(AssemblerRegisters.rax, AssemblerRegisters.__qword_ptr[AssemblerRegisters.rdi]);
            a.mov(AssemblerRegisters.rdx, AssemblerRegisters.__qword_ptr[AssemblerRegisters.rdi + 8]);
            a.lea(AssemblerRegisters.rbx, AssemblerRegisters.__[AssemblerRegisters.rax + 1]);
            a.lea(AssemblerRegisters.rcx, AssemblerRegisters.__[AssemblerRegisters.rdx + 1]);
            a.@lock.cmpxchg16b(AssemblerRegisters.__xmmword_ptr[AssemblerRegisters.rdi]);
            a.jne(loop);
        }, ThreadIterations / 2);
        Assert.Equal((ulong)ThreadIterations, m.Ram.ReadU64(InterpreterMachine.DataAddress));
        Assert.Equal((ulong)ThreadIterations, m.Ram.ReadU64(InterpreterMachine.DataAddress + 8));
    }
}
