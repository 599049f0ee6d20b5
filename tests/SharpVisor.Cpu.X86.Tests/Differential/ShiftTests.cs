using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Harness;
using static SharpVisor.Cpu.X86.Tests.Differential.AluTests;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// SHL/SAL/SHR/SAR/ROL/ROR/RCL/RCR (by 1, CL, imm8) and SHLD/SHRD against the host CPU, every width,
/// register and memory destinations. Flags the SDM leaves undefined are not compared: OF unless the
/// masked count is 1, AF after shifts, CF after SHL/SHR by a count of at least the width, and OF
/// after RCL/RCR whose reduced count is 0. A masked count of 0 must change no flag (all compared).
/// </summary>
public unsafe class ShiftTests : IClassFixture<RunnerFixture>
{
    const ulong CF = 1, AF = 0x10, OF = 0x800;
    readonly DifferentialRunner _runner;
    public ShiftTests(RunnerFixture f) => _runner = f.Runner;

    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) ? n : 24;

    /// <summary>Counts near the interesting boundaries, else random bytes (the CPU masks them).</summary>
    static int Count(DiffCase t, int bits)
    {
        int[] edges = [0, 1, 2, bits - 1, bits, bits + 1, 8, 9, 16, 17, 31, 32, 33, 63, 64, 65, 255];
        return t.Rng.Next(3) == 0 ? t.Rng.Next(256) : edges[t.Rng.Next(edges.Length)];
    }

    static ulong MaskFor(string name, int bits, int rawCount)
    {
        int n = rawCount & (bits == 64 ? 63 : 31);
        if (n == 0)
        {
            return DiffCase.ArithFlags;
        }
        if (name is "Rcl" or "Rcr" && ((bits == 8 && n % 9 == 0) || (bits == 16 && n % 17 == 0)) && HostCpu.IsIntel)
        {
            // No rotation: the Intel host leaves every flag, OF included, as it was (SharpVisor does the same;
            // the ring-3 instruction test of issue 16 found the difference). Not checked on AMD.
            return DiffCase.ArithFlags;
        }
        ulong mask = DiffCase.ArithFlags;
        if (n != 1)
        {
            mask &= ~OF;
        }
        switch (name)
        {
            case "Shl" or "Sal" or "Shr" or "Sar":
                mask &= ~AF;
                if (n >= bits && name != "Sar")
                {
                    mask &= ~CF; // SDM SAL/SAR/SHL/SHR: CF undefined for count >= operand size
                }
                break;
        }
        return mask;
    }

    [Theory]
    [InlineData("Shl"), InlineData("Sal"), InlineData("Shr"), InlineData("Sar"), InlineData("Rol"), InlineData("Ror"), InlineData("Rcl"), InlineData("Rcr")]
    public void ShiftsAndRotatesMatchTheHost(string name)
    {
        var t = new DiffCase(_runner, name);
        var failures = new List<string>();
        foreach (int bits in new[] { 8, 16, 32, 64 })
        {
            foreach (string form in new[] { "1", "CL", "imm8" })
            {
                for (int i = 0; i < Iterations; i++)
                {
                    bool mem = i % 3 == 2;
                    int count = form == "1" ? 1 : Count(t, bits);
                    var code = Parse($"{name}_rm{bits}_{form}");
                    var dst = Pick(t, bits);
                    Instruction ins = form switch
                    {
                        "1" => mem ? Instruction.Create(code, Mem(t, bits), 1) : Instruction.Create(code, dst, 1),
                        "CL" => mem ? Instruction.Create(code, Mem(t, bits), Register.CL) : Instruction.Create(code, dst, Register.CL),
                        _ => mem ? Instruction.Create(code, Mem(t, bits), count) : Instruction.Create(code, dst, count),
                    };
                    var ctx = t.RandomContext();
                    if (form == "CL")
                    {
                        unsafe { ctx.Gpr[1] = (ctx.Gpr[1] & ~0xFFUL) | (uint)count; }
                    }
                    string diff = t.Check(t.Encode(ins), ctx, t.RandomData(), MaskFor(name, bits, count), $"{name} {(mem ? "m" : "r")}{bits},{form} count={count}");
                    if (diff.Length > 0) failures.Add(diff);
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Theory]
    [InlineData("Shld"), InlineData("Shrd")]
    public void DoublePrecisionShiftsMatchTheHost(string name)
    {
        var t = new DiffCase(_runner, name, salt: 1);
        var failures = new List<string>();
        foreach (int bits in new[] { 16, 32, 64 })
        {
            foreach (bool cl in new[] { false, true })
            {
                for (int i = 0; i < Iterations * 2; i++)
                {
                    int count = Count(t, bits);
                    int n = count & (bits == 64 ? 63 : 31);
                    if (bits == 16 && n > 16)
                    {
                        continue; // SDM SHLD/SHRD: count greater than the operand size is undefined
                    }
                    bool mem = i % 2 == 1;
                    var code = Parse($"{name}_rm{bits}_r{bits}_{(cl ? "CL" : "imm8")}");
                    var src = Pick(t, bits);
                    Instruction ins = (mem, cl) switch
                    {
                        (false, false) => Instruction.Create(code, Pick(t, bits), src, count),
                        (false, true) => Instruction.Create(code, Pick(t, bits), src, Register.CL),
                        (true, false) => Instruction.Create(code, Mem(t, bits), src, count),
                        _ => Instruction.Create(code, Mem(t, bits), src, Register.CL),
                    };
                    var ctx = t.RandomContext();
                    unsafe { ctx.Gpr[1] = (ctx.Gpr[1] & ~0xFFUL) | (uint)count; }
                    if (cl && (ins.Op0Kind == OpKind.Register && ins.Op0Register.GetFullRegister() == Register.RCX || src.GetFullRegister() == Register.RCX))
                    {
                        continue; // keep the count independent of the operands for the undefined-count filter above
                    }
                    ulong mask = DiffCase.ArithFlags & ~AF;
                    if (n != 1) mask &= ~OF;
                    if (n == 0) mask = DiffCase.ArithFlags;
                    string diff = t.Check(t.Encode(ins), ctx, t.RandomData(), mask, $"{name} {(mem ? "m" : "r")}{bits} count={count}");
                    if (diff.Length > 0) failures.Add(diff);
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void LockedShiftIsInvalid()
    {
        using var m = new InterpreterMachine();
        var ins = Instruction.Create(Code.Shl_rm32_1, new MemoryOperand(Register.RBX), 1);
        ins.HasLockPrefix = true;
        m.Load(ins);
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        Assert.Equal<int?>(Vector.UD, m.Run());
    }

    [Fact]
    public void ShiftToReadOnlyMemoryFaultsWithoutChangingFlags()
    {
        using var m = new InterpreterMachine(cpl: 3);
        m.MakeReadOnly(InterpreterMachine.DataAddress);
        m.Load(Instruction.Create(Code.Shl_rm32_imm8, new MemoryOperand(Register.RBX), 4));
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        m.Ram.WriteU32(InterpreterMachine.DataAddress, 0xF000_0001);
        m.Cpu.SetFlags(0x202 | 0x8D5);
        Assert.Equal<int?>(Vector.PF, m.Run());
        Assert.Equal(0x202UL | 0x8D5, m.Cpu.GetFlags());
        Assert.Equal(0xF000_0001U, m.Ram.ReadU32(InterpreterMachine.DataAddress));
    }
}
