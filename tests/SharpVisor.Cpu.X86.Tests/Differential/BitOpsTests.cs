using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Tests.Harness;
using static SharpVisor.Cpu.X86.Tests.Differential.AluTests;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// BT/BTS/BTR/BTC (register and immediate offsets, register and memory operands — including
/// register offsets that address outside the operand — and LOCK), BSF/BSR (zero sources included),
/// LZCNT/TZCNT executed as BSR/BSF, and POPCNT as #UD, against the host CPU.
/// </summary>
public unsafe class BitOpsTests : IClassFixture<RunnerFixture>
{
    const ulong CF = 1, ZF = 0x40;
    readonly DifferentialRunner _runner;
    public BitOpsTests(RunnerFixture f) => _runner = f.Runner;

    static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("SV_DIFF_ITERATIONS"), out int n) ? n : 30;

    [Theory]
    [InlineData("Bt"), InlineData("Bts"), InlineData("Btr"), InlineData("Btc")]
    public void BitTestsMatchTheHost(string name)
    {
        var t = new DiffCase(_runner, name);
        var failures = new List<string>();
        // CF is the bit; ZF is unaffected (SDM BT); OF, SF, AF, PF are undefined.
        const ulong mask = CF | ZF;
        foreach (int bits in new[] { 16, 32, 64 })
        {
            int bytes = bits / 8;
            for (int i = 0; i < Iterations; i++)
            {
                var ctx = t.RandomContext();
                var offsetReg = Pick(t, bits);
                var ins = (i % 4) switch
                {
                    0 => Instruction.Create(Parse($"{name}_rm{bits}_r{bits}"), Pick(t, bits), offsetReg),
                    1 => Instruction.Create(Parse($"{name}_rm{bits}_imm8"), Pick(t, bits), t.Rng.Next(256)),
                    2 => Instruction.Create(Parse($"{name}_rm{bits}_imm8"), Mem(t, bits), t.Rng.Next(256)),
                    _ => default,
                };
                if (i % 4 == 3)
                {
                    // Memory with a register bit offset: the offset is signed and may reach far outside the operand.
                    int disp = 512 + t.Rng.Next(3000);
                    long lo = -(long)(disp - bytes) * 8, hi = (long)(DifferentialRunner.DataSize - disp - 2 * bytes) * 8;
                    if (bits == 16)
                    {
                        lo = Math.Max(lo, short.MinValue);
                        hi = Math.Min(hi, short.MaxValue);
                    }
                    long offset = t.Rng.NextInt64(lo, hi);
                    ulong keepHigh = bits == 64 ? 0 : t.Value() & ~((1UL << bits) - 1);
                    unsafe { ctx.Gpr[(int)offsetReg.GetFullRegister() - (int)Register.RAX] = keepHigh | ((ulong)offset & (bits == 64 ? ulong.MaxValue : (1UL << bits) - 1)); }
                    ins = Instruction.Create(Parse($"{name}_rm{bits}_r{bits}"), new MemoryOperand(Register.RBX, disp), offsetReg);
                    if (name != "Bt" && t.Rng.Next(2) == 0)
                    {
                        ins.HasLockPrefix = true;
                    }
                }
                string diff = t.Check(t.Encode(ins), ctx, t.RandomData(), mask, $"{name}{bits} form {i % 4}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Theory]
    [InlineData("Bsf"), InlineData("Bsr")]
    public void BitScansMatchTheHost(string name)
    {
        var t = new DiffCase(_runner, name);
        var failures = new List<string>();
        foreach (int bits in new[] { 16, 32, 64 })
        {
            for (int i = 0; i < Iterations * 2; i++)
            {
                var ctx = t.RandomContext();
                var data = t.RandomData();
                var src = Pick(t, bits);
                bool mem = i % 2 == 1;
                bool zero = t.Rng.Next(4) == 0;
                Instruction ins;
                if (mem)
                {
                    int disp = t.Rng.Next(DifferentialRunner.DataSize - 8);
                    if (zero) Array.Clear(data, disp, bits / 8);
                    ins = Instruction.Create(Parse($"{name}_r{bits}_rm{bits}"), Pick(t, bits), new MemoryOperand(Register.RBX, disp));
                }
                else
                {
                    if (zero) unsafe { ctx.Gpr[(int)src.GetFullRegister() - (int)Register.RAX] &= ~((bits == 64 ? ulong.MaxValue : (1UL << bits) - 1)); }
                    ins = Instruction.Create(Parse($"{name}_r{bits}_rm{bits}"), Pick(t, bits), src);
                }
                // Only ZF is defined (SDM BSF/BSR); with a zero source the destination is unchanged on both vendors.
                string diff = t.Check(t.Encode(ins), ctx, data, ZF, $"{name}{bits} {(mem ? "mem" : "reg")} zero={zero}");
                if (diff.Length > 0) failures.Add(diff);
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    /// <summary>
    /// The host implements LZCNT/TZCNT, so the oracle for the F3-prefixed encodings is the host
    /// running the unprefixed BSR/BSF from the same inputs (what a CPU without ABM/BMI1 executes).
    /// </summary>
    [Theory]
    [InlineData("Lzcnt", "Bsr"), InlineData("Tzcnt", "Bsf")]
    public void CountInstructionsExecuteAsBitScans(string name, string asName)
    {
        var t = new DiffCase(_runner, name);
        var failures = new List<string>();
        foreach (int bits in new[] { 16, 32, 64 })
        {
            for (int i = 0; i < Iterations; i++)
            {
                var ctx = t.RandomContext();
                var data = t.RandomData();
                var dst = Pick(t, bits);
                var src = Pick(t, bits);
                if (i % 4 == 0)
                {
                    unsafe { ctx.Gpr[(int)src.GetFullRegister() - (int)Register.RAX] = 0; }
                }
                byte[] counted = t.Encode(Instruction.Create(Parse($"{name}_r{bits}_rm{bits}"), dst, src));
                byte[] scan = t.Encode(Instruction.Create(Parse($"{asName}_r{bits}_rm{bits}"), dst, src));
                var native = _runner.Run(scan, ctx, data).Native;
                var outcome = _runner.Run(counted, ctx, data);
                Assert.Null(outcome.EmulatedException);
                var emulated = outcome.Emulated;
                unsafe
                {
                    for (int r = 0; r < 16; r++)
                    {
                        if (native.Gpr[r] != emulated.Gpr[r])
                        {
                            failures.Add($"{name}{bits} {dst},{src}: {X86Context.Names[r]} bsx=0x{native.Gpr[r]:x} emulated=0x{emulated.Gpr[r]:x}");
                        }
                    }
                }
                if ((native.Rflags & ZF) != (emulated.Rflags & ZF))
                {
                    failures.Add($"{name}{bits}: ZF differs");
                }
            }
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void PopcntIsInvalidBecauseItIsNotAdvertised()
    {
        var t = new DiffCase(_runner, 3);
        var o = _runner.Run(t.Encode(Instruction.Create(Code.Popcnt_r32_rm32, Register.EAX, Register.ECX)), t.RandomContext(), t.RandomData());
        Assert.Equal<int?>(Vector.UD, o.EmulatedException);
        var (_, _, ecx, _) = new CpuIdModel().Query(1, 0, 0);
        Assert.Equal(0u, ecx & (1u << 23)); // CPUID.1:ECX.POPCNT
    }

    [Fact]
    public void LockedBtAndRegisterDestinationsAreInvalid()
    {
        using var m = new InterpreterMachine();
        var bt = Instruction.Create(Code.Bt_rm32_r32, new MemoryOperand(Register.RBX), Register.ECX);
        bt.HasLockPrefix = true;
        var btsReg = Instruction.Create(Code.Bts_rm32_r32, Register.EAX, Register.ECX);
        btsReg.HasLockPrefix = true;
        foreach (var ins in new[] { bt, btsReg })
        {
            m.Load(ins);
            m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
            Assert.Equal<int?>(Vector.UD, m.Run());
        }
    }

    [Fact]
    public void NegativeRegisterOffsetReachesBelowTheOperand()
    {
        using var m = new InterpreterMachine();
        m.Load(Instruction.Create(Code.Bts_rm32_r32, new MemoryOperand(Register.RBX, 0x100), Register.ECX));
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        m.Cpu.Regs.Gpr[1] = unchecked((ulong)-33); // bit 31 of the dword at -8 (SDM BT: offset SAR 5, * 4)
        Assert.Null(m.Run());
        Assert.Equal(0x8000_0000u, m.Ram.ReadU32(InterpreterMachine.DataAddress + 0x100 - 8));
    }
}
