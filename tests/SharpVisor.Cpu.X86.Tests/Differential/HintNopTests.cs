using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// The hint-NOP opcode space — 0F 0D (PREFETCH group), 0F 18 (PREFETCHh and reserved hints), 0F 19
/// to 0F 1E (reserved NOPs, CLDEMOTE, MPX and CET encodings that are NOPs while those are off) and
/// 0F 1F (multi-byte NOP) — against the host, every ModRM form (register and memory) under the
/// prefixes that select other instructions there. Memory operands point at unmapped and at
/// non-canonical addresses: a hint never accesses them. The expected behaviour is Intel's, which
/// SharpVisor presents; forms AMD documents differently are compared with the host on Intel only.
/// </summary>
public unsafe class HintNopTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public HintNopTests(RunnerFixture f) => _runner = f.Runner;

    static readonly byte[][] s_prefixes = [[], [0x66], [0xF3], [0xF2], [0x67], [0x48], [0x66, 0x48], [0xF3, 0x48], [0xF0]];
    static readonly byte[] s_opcodes = [0x0D, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F];

    /// <summary>Prefixes + 0F op ModRM, with a SIB byte for rm = 4 and the displacement the form has.</summary>
    static byte[] Encode(byte[] prefix, byte opcode, int mod, int reg, int rm)
    {
        var b = new List<byte>(prefix) { 0x0F, opcode, (byte)(mod << 6 | reg << 3 | rm) };
        if (mod != 3 && rm == 4)
        {
            b.Add(0x00); // SIB: [rax + rax*1]
        }
        if (mod == 1)
        {
            b.Add(0x40);
        }
        else if (mod == 2 || (mod == 0 && rm == 5))
        {
            b.AddRange(BitConverter.GetBytes(0x4000_0000)); // RIP + 1 GiB: unmapped on both sides
        }
        return [.. b];
    }

    [Theory]
    [InlineData(0x10000UL)]                // canonical, unmapped on both sides
    [InlineData(0x8000_0000_0000_0000UL)]  // non-canonical
    public void HintNopSpaceMatchesTheHost(ulong address)
    {
        var t = new DiffCase(_runner, 16);
        var ctx = t.RandomContext();
        for (int i = 0; i < 16; i++)
        {
            if (i != 4)
            {
                ctx.Gpr[i] = address;
            }
        }
        var cases = new List<DifferentialRunner.NativeCase>();
        var intelOnly = new List<bool>();
        foreach (var prefix in s_prefixes)
        {
            foreach (byte opcode in s_opcodes)
            {
                for (int mod = 0; mod < 4; mod++)
                {
                    for (int reg = 0; reg < 8; reg++)
                    {
                        foreach (int rm in new[] { 0, 2, 3, 4, 5 })
                        {
                            cases.Add(new(Encode(prefix, opcode, mod, reg, rm), ctx));
                            // Register forms of the prefetch groups (0F 0D, 0F 18 /0-3): AMD's manual
                            // lists #UD for a register operand; Intel runs them as NOPs.
                            intelOnly.Add(mod == 3 && (opcode == 0x0D || opcode == 0x18 && reg < 4));
                        }
                    }
                }
            }
        }
        byte[] data = t.RandomData();
        var native = _runner.RunNativeInChild(cases, data);
        var failures = new List<string>();
        for (int i = 0; i < cases.Count; i++)
        {
            // Intel: a NOP, or #UD with LOCK (SDM Vol. 2A LOCK: #UD on an instruction it cannot prefix).
            int expected = cases[i].Code[0] == 0xF0 ? Vector.UD : -1;
            var (emulated, _, rip, exception) = _runner.RunInterpreter(cases[i].Code, ctx, data);
            string label = $"{Convert.ToHexString(cases[i].Code)}: expected {(expected < 0 ? "no exception" : $"vector {expected}")}, host {native[i]}, SharpVisor {(exception is int v ? $"vector {v}" : "no exception")}";
            if ((exception ?? -1) != expected || ((HostIsIntel || !intelOnly[i]) && native[i].Vector != expected))
            {
                failures.Add(label);
                continue;
            }
            if (exception == null)
            {
                // A NOP: nothing but RIP changes.
                bool same = rip == _runner.CodeAddress + (ulong)cases[i].Code.Length && (emulated.Rflags & 0xFFF) == (ctx.Rflags & 0xFFF);
                for (int r = 0; r < 16; r++)
                {
                    same &= emulated.Gpr[r] == ctx.Gpr[r];
                }
                if (!same)
                {
                    failures.Add(label + " but the state changed");
                }
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {cases.Count} differ:\n" + string.Join("\n", failures.Take(40)));
    }

    static bool HostIsIntel => System.Runtime.Intrinsics.X86.X86Base.CpuId(0, 0).Ebx == 0x756E_6547; // "Genu"

    /// <summary>The issue's cases on a kernel-mode vCPU too: no fault, no #PF for an unmapped operand.</summary>
    [Theory]
    [InlineData(new byte[] { 0x0F, 0x1F, 0x80, 0x00, 0x00, 0x00, 0x00 })] // nop dword [rax + 0]
    [InlineData(new byte[] { 0x0F, 0x1F, 0x48, 0x10 })]                    // 0F 1F /1
    [InlineData(new byte[] { 0x0F, 0x18, 0x20 })]                          // 0F 18 /4
    [InlineData(new byte[] { 0x0F, 0x18, 0xF8 })]                          // 0F 18 /7, register form
    [InlineData(new byte[] { 0x0F, 0x19, 0x00 })]
    [InlineData(new byte[] { 0x0F, 0x1C, 0x00 })]                          // CLDEMOTE (not advertised: a NOP)
    [InlineData(new byte[] { 0xF3, 0x0F, 0x1E, 0xC8 })]                    // RDSSPD eax: a NOP while CET is off
    [InlineData(new byte[] { 0xF3, 0x48, 0x0F, 0x1E, 0xC8 })]              // RDSSPQ rax
    [InlineData(new byte[] { 0x0F, 0x1E, 0xFA })]                          // ENDBR64 without F3
    [InlineData(new byte[] { 0x0F, 0x0D, 0x10 })]                          // 0F 0D /2 (PREFETCHWT1 on some CPUs)
    public void HintNopsNeitherFaultNorAccessMemory(byte[] code)
    {
        using var m = new InterpreterMachine(cpl: 0);
        m.Unmap(InterpreterMachine.DataAddress);
        m.LoadBytes(code);
        m.Cpu.Regs.Gpr[0] = InterpreterMachine.DataAddress;
        Assert.Null(m.Run());
        Assert.Equal(InterpreterMachine.DataAddress, m.Cpu.Regs.Gpr[0]);
        Assert.Equal(0, m.Cpu.Counters.Unimplemented.Value);
    }

    /// <summary>
    /// PREFETCHW (0F 0D /1) executes as a hint, so CPUID says so (CPUID.80000001H:ECX.PREFETCHW[bit 8],
    /// "3DNowPrefetch"): Linux then uses it for write prefetches, as on hardware.
    /// </summary>
    [Fact]
    public void PrefetchwIsAdvertised() => Assert.Equal(1u << 8, new CpuIdModel().Query(0x8000_0001, 0, 0).Ecx & (1u << 8));
}
