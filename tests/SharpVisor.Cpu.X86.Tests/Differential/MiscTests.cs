using Iced.Intel;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// XLAT, CLFLUSH/CLFLUSHOPT, fences, PAUSE, PREFETCHh, ENDBR64 against the host; UD0/UD1/UD2,
/// RDRAND/RDSEED (#UD: not advertised), CLFLUSH's access check, and the legacy-mode-only BCD
/// instructions and BOUND on a 32-bit vCPU (the host runner is 64-bit, where they are #UD).
/// </summary>
public unsafe class MiscTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public MiscTests(RunnerFixture f) => _runner = f.Runner;

    [Fact]
    public void XlatMatchesTheHost()
    {
        var t = new DiffCase(_runner, 31);
        var failures = new List<string>();
        for (int i = 0; i < 40; i++)
        {
            string diff = t.Check([0xD7], t.RandomContext(), t.RandomData(), DiffCase.ArithFlags, "xlatb");
            if (diff.Length > 0) failures.Add(diff);
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(10)));
    }

    [Fact]
    public void HintsAndFencesChangeNothingVisible()
    {
        var t = new DiffCase(_runner, 32);
        byte[] code =
        [
            0x0F, 0xAE, 0xE8,             // lfence
            0x0F, 0xAE, 0xF0,             // mfence
            0x0F, 0xAE, 0xF8,             // sfence
            0xF3, 0x90,                   // pause
            0x0F, 0x18, 0x0B,             // prefetcht0 [rbx]
            0x0F, 0x18, 0x03,             // prefetchnta [rbx]
            0x0F, 0x0D, 0x0B,             // prefetchw [rbx]
            0xF3, 0x0F, 0x1E, 0xFA,       // endbr64
            0x0F, 0xAE, 0x7B, 0x40,       // clflush [rbx+0x40]
            0x66, 0x0F, 0xAE, 0x7B, 0x40, // clflushopt [rbx+0x40]
        ];
        for (int i = 0; i < 5; i++)
        {
            string diff = t.Check(code, t.RandomContext(), t.RandomData(), DiffCase.ArithFlags, "hints");
            Assert.True(diff.Length == 0, diff);
        }
    }

    [Fact]
    public void PrefetchOfAnUnmappedAddressDoesNotFault()
    {
        using var m = new InterpreterMachine(cpl: 3);
        m.Unmap(InterpreterMachine.DataAddress);
        m.LoadBytes([0x0F, 0x18, 0x0B]); // prefetcht0 [rbx]
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        Assert.Null(m.Run());
    }

    [Fact]
    public void ClflushChecksTheAccessAsARead()
    {
        using var m = new InterpreterMachine(cpl: 3);
        m.Unmap(InterpreterMachine.DataAddress);
        m.LoadBytes([0x0F, 0xAE, 0x3B]); // clflush [rbx]
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress + 8;
        Assert.Equal<int?>(Vector.PF, m.Run());
        Assert.Equal(InterpreterMachine.DataAddress + 8, m.Cpu.Cr2);
        // A read-only page is fine: CLFLUSH needs no write permission.
        using var m2 = new InterpreterMachine(cpl: 3);
        m2.MakeReadOnly(InterpreterMachine.DataAddress);
        m2.LoadBytes([0x0F, 0xAE, 0x3B]);
        m2.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        Assert.Null(m2.Run());
    }

    public static TheoryData<string, byte[]> InvalidOpcodes => new()
    {
        { "ud2", [0x0F, 0x0B] },
        { "ud1 eax,eax", [0x0F, 0xB9, 0xC0] },
        { "ud0 eax,eax", [0x0F, 0xFF, 0xC0] },
        { "rdrand eax", [0x0F, 0xC7, 0xF0] },
        { "rdseed eax", [0x0F, 0xC7, 0xF8] },
        { "daa (64-bit)", [0x27] },
        { "aad (64-bit)", [0xD5, 0x0A] },
    };

    [Theory]
    [MemberData(nameof(InvalidOpcodes))]
    public void InvalidOrUnadvertisedInstructionsRaiseUd(string label, byte[] code)
    {
        using var m = new InterpreterMachine();
        m.LoadBytes(code);
        Assert.True(m.Run() == Vector.UD, label);
        Assert.Equal(InterpreterMachine.CodeAddress, m.Cpu.Rip);
        Assert.Equal(0, m.Cpu.Counters.Unimplemented.Value); // bound on purpose, not the "not implemented" fallback
    }

    [Theory]
    [InlineData(Code.VEX_Shlx_r32_rm32_r32), InlineData(Code.VEX_Sarx_r64_rm64_r64), InlineData(Code.VEX_Andn_r32_r32_rm32),
        InlineData(Code.VEX_Bzhi_r64_rm64_r64), InlineData(Code.VEX_Pdep_r32_r32_rm32), InlineData(Code.Adcx_r32_rm32)]
    public void UnadvertisedBitManipulationExtensionsRaiseUd(Code code)
    {
        using var m = new InterpreterMachine();
        var ins = code == Code.Adcx_r32_rm32
            ? Instruction.Create(code, Register.EAX, Register.ECX)
            : Instruction.Create(code, code.ToString().Contains("64") ? Register.RAX : Register.EAX,
                code.ToString().Contains("64") ? Register.RCX : Register.ECX, code.ToString().Contains("64") ? Register.RDX : Register.EDX);
        m.Load(ins);
        m.Cpu.Regs.Gpr[0] = 0x1234;
        Assert.Equal<int?>(Vector.UD, m.Run());
        Assert.Equal(0x1234UL, m.Cpu.Regs.Gpr[0]);
        Assert.Equal(0, m.Cpu.Counters.Unimplemented.Value);
        Assert.Equal(0u, new CpuIdModel().Query(7, 0, 0).Ebx & ((1u << 3) | (1u << 8) | (1u << 19))); // BMI1, BMI2, ADX
    }

    [Fact]
    public void RdrandAndRdseedAreNotAdvertised()
    {
        var model = new CpuIdModel();
        Assert.Equal(0u, model.Query(1, 0, 0).Ecx & (1u << 30));  // CPUID.1:ECX.RDRAND
        Assert.Equal(0u, model.Query(7, 0, 0).Ebx & (1u << 18));  // CPUID.(7,0):EBX.RDSEED
    }

    // ---------------------------------------------------------------- BCD on a 32-bit vCPU

    static byte Bcd(int v) => (byte)((v / 10) << 4 | v % 10);

    static (ulong Rax, ulong Flags) Run32(InterpreterMachine m, ulong rax, ulong rbx, ulong flags)
    {
        m.Cpu.Rip = InterpreterMachine.CodeAddress;
        m.Cpu.Regs.Gpr[0] = rax;
        m.Cpu.Regs.Gpr[3] = rbx;
        m.Cpu.SetFlags(flags);
        Assert.Null(m.Run());
        return (m.Cpu.Regs.Gpr[0], m.Cpu.GetFlags());
    }

    /// <summary>
    /// DAA's purpose (SDM Vol. 2A DAA: "adjusts the sum of two packed BCD values to create a packed
    /// BCD result"): for every pair of two-digit BCD numbers, ADD then DAA gives the decimal sum mod
    /// 100 with CF = decimal carry, and DAS after SUB the decimal difference with CF = borrow.
    /// </summary>
    [Fact]
    public void DaaAndDasProduceDecimalSumsAndDifferences()
    {
        using var add = new InterpreterMachine(bits: 32);
        add.Load(Instruction.Create(Code.Add_rm8_r8, Register.AL, Register.BL), Instruction.Create(Code.Daa));
        using var sub = new InterpreterMachine(bits: 32);
        sub.Load(Instruction.Create(Code.Sub_rm8_r8, Register.AL, Register.BL), Instruction.Create(Code.Das));
        for (int a = 0; a < 100; a++)
        {
            for (int b = 0; b < 100; b++)
            {
                var (rax, f) = Run32(add, 0xFFFF_FF00 | Bcd(a), Bcd(b), 0x202);
                Assert.Equal(Bcd((a + b) % 100), (byte)rax);
                Assert.Equal(0xFFFF_FF00UL, rax & ~0xFFUL);
                Assert.Equal(a + b >= 100, (f & 1) != 0);
                Assert.Equal((a + b) % 100 == 0, (f & 0x40) != 0);
                (rax, f) = Run32(sub, Bcd(a), Bcd(b), 0x202);
                Assert.Equal(Bcd(((a - b) % 100 + 100) % 100), (byte)rax);
                Assert.Equal(a < b, (f & 1) != 0);
            }
        }
    }

    [Fact]
    public void DasMatchesTheSdmExample()
    {
        // SDM Vol. 2A DAS, example: SUB AL, BL with AL = 35H, BL = 47H gives EEH; DAS gives 88H with
        // (O)SZAPC = X10111.
        using var m = new InterpreterMachine(bits: 32);
        m.Load(Instruction.Create(Code.Sub_rm8_r8, Register.AL, Register.BL), Instruction.Create(Code.Das));
        var (rax, f) = Run32(m, 0x35, 0x47, 0x202);
        Assert.Equal(0x88UL, rax & 0xFF);
        Assert.Equal(0x80UL | 0x10 | 0x04 | 0x01, f & 0xD5); // SF, AF, PF, CF set; ZF clear
    }

    /// <summary>
    /// AAA/AAS (SDM Vol. 2A: adjust the sum/difference of two unpacked BCD digits): after ADD/SUB of
    /// digits a, b in AL, AL holds the decimal digit, AH is incremented (decremented) on carry (borrow),
    /// and CF = AF = carry/borrow.
    /// </summary>
    [Fact]
    public void AaaAndAasAdjustUnpackedDigits()
    {
        using var add = new InterpreterMachine(bits: 32);
        add.Load(Instruction.Create(Code.Add_rm8_r8, Register.AL, Register.BL), Instruction.Create(Code.Aaa));
        using var sub = new InterpreterMachine(bits: 32);
        sub.Load(Instruction.Create(Code.Sub_rm8_r8, Register.AL, Register.BL), Instruction.Create(Code.Aas));
        for (int a = 0; a < 10; a++)
        {
            for (int b = 0; b < 10; b++)
            {
                var (rax, f) = Run32(add, 0x0500 | (ulong)a, (ulong)b, 0x202);
                Assert.Equal((ulong)((a + b) % 10), rax & 0xFF);
                Assert.Equal(a + b >= 10 ? 6UL : 5UL, (rax >> 8) & 0xFF);
                Assert.Equal(a + b >= 10 ? 0x11UL : 0UL, f & 0x11);
                (rax, f) = Run32(sub, 0x0500 | (ulong)a, (ulong)b, 0x202);
                Assert.Equal((ulong)(((a - b) % 10 + 10) % 10), rax & 0xFF);
                Assert.Equal(a < b ? 4UL : 5UL, (rax >> 8) & 0xFF);
                Assert.Equal(a < b ? 0x11UL : 0UL, f & 0x11);
            }
        }
    }

    /// <summary>AAM imm8: AH = AL / imm8, AL = AL mod imm8; AAD imm8: AL = AH * imm8 + AL, AH = 0 (SDM Vol. 2A AAM, AAD).</summary>
    [Fact]
    public void AamAndAadConvertBetweenBinaryAndUnpackedDigits()
    {
        using var aam = new InterpreterMachine(bits: 32);
        aam.LoadBytes([0xD4, 0x0A]);
        using var aam7 = new InterpreterMachine(bits: 32);
        aam7.LoadBytes([0xD4, 0x07]);
        using var aad = new InterpreterMachine(bits: 32);
        aad.LoadBytes([0xD5, 0x0A]);
        for (int v = 0; v < 256; v++)
        {
            var (rax, f) = Run32(aam, 0xAB00 | (ulong)v, 0, 0x202);
            Assert.Equal((ulong)((v / 10) << 8 | v % 10), rax & 0xFFFF);
            Assert.Equal(v % 10 == 0, (f & 0x40) != 0);
            (rax, _) = Run32(aam7, (ulong)v, 0, 0x202);
            Assert.Equal((ulong)((v / 7) << 8 | v % 7), rax & 0xFFFF);
            (rax, f) = Run32(aad, (ulong)((v / 10) << 8 | v % 10), 0, 0x202);
            Assert.Equal((ulong)v, rax & 0xFFFF);
            Assert.Equal((v & 0x80) != 0, (f & 0x80) != 0);
        }
        using var aad16 = new InterpreterMachine(bits: 32);
        aad16.LoadBytes([0xD5, 0x10]); // base 16: AL = AH * 16 + AL, truncated to 8 bits
        Assert.Equal(0x0034UL, Run32(aad16, 0x1304, 0, 0x202).Rax & 0xFFFF);
    }

    [Fact]
    public void AamByZeroIsDivideError()
    {
        using var m = new InterpreterMachine(bits: 32);
        m.LoadBytes([0xD4, 0x00]);
        m.Cpu.Regs.Gpr[0] = 0x1234;
        Assert.Equal<int?>(Vector.DE, m.Run());
        Assert.Equal(0x1234UL, m.Cpu.Regs.Gpr[0]);
    }

    [Fact]
    public void BoundRaisesBrOutsideTheSignedRange()
    {
        using var m = new InterpreterMachine(bits: 32);
        const ulong bounds = InterpreterMachine.DataAddress;
        m.Ram.WriteU32(bounds, unchecked((uint)-5));
        m.Ram.WriteU32(bounds + 4, 10);
        m.Load(Instruction.Create(Code.Bound_r32_m3232, Register.EAX, new MemoryOperand(Register.EBX)));
        foreach (var (index, inRange) in new[] { (-5, true), (10, true), (0, true), (-6, false), (11, false), (int.MinValue, false) })
        {
            m.Cpu.Rip = InterpreterMachine.CodeAddress;
            m.Cpu.Regs.Gpr[3] = bounds;
            m.Cpu.Regs.Gpr[0] = (uint)index;
            Assert.Equal(inRange ? null : (int?)Vector.BR, m.Run());
        }
        // 16-bit form: the pair is two words.
        m.Ram.WriteU32(bounds, 0x0010_FFF0); // lower -16, upper 16
        m.Load(Instruction.Create(Code.Bound_r16_m1616, Register.AX, new MemoryOperand(Register.EBX)));
        m.Cpu.Regs.Gpr[0] = 0xFFFF_0011; // AX = 17
        Assert.Equal<int?>(Vector.BR, m.Run());
        m.Cpu.Rip = InterpreterMachine.CodeAddress;
        m.Cpu.Regs.Gpr[0] = 0x0000_FFF0; // AX = -16
        Assert.Null(m.Run());
    }
}
