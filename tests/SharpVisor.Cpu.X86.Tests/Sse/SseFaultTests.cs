using Iced.Intel;
using SharpVisor.Cpu.X86.Tests.Differential;
using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Sse;

/// <summary>
/// Interpreter-only checks of what cannot run natively in a test process: the #GP, #UD, #NM and
/// #XM conditions of SSE instructions, and FXSAVE/FXRSTOR of state a user process cannot set.
/// </summary>
public class SseFaultTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public SseFaultTests(RunnerFixture f) => _runner = f.Runner;

    byte[] Encode(params Instruction[] ins) => new DiffCase(_runner, 1).Encode(ins);

    X86Context Context()
    {
        var ctx = new DiffCase(_runner, 2).RandomContext();
        for (int i = 0; i < 16; i++)
        {
            ctx.SetXmm(i, 0x3FF0_0000_0000_0000UL + (ulong)i, 0x4000_0000_0000_0000UL + (ulong)i);
        }
        return ctx;
    }

    (X86Context State, byte[] Data, ulong Rip, int? Exception) Run(byte[] code, X86Context ctx, byte[]? data = null, ulong setCr0 = 0, ulong clearCr4 = 0)
    {
        var c = _runner.Cpu;
        ulong cr0 = c.Cr0Value, cr4 = c.Cr4Value;
        try
        {
            c.Cr0Value |= setCr0;
            c.Cr4Value &= ~clearCr4;
            return _runner.RunInterpreter(code, ctx, data ?? new byte[DifferentialRunner.DataSize]);
        }
        finally
        {
            c.Cr0Value = cr0;
            c.Cr4Value = cr4;
        }
    }

    [Fact]
    public void MisalignedOperandOfAnAlignedFormRaisesGeneralProtection()
    {
        var data = new byte[DifferentialRunner.DataSize];
        new Random(3).NextBytes(data);
        var ctx = Context();
        // MOVAPS load, PADDB with m128, MOVDQA store: #GP(0), nothing changed.
        foreach (var ins in new[]
        {
            Instruction.Create(Code.Movaps_xmm_xmmm128, Register.XMM1, new MemoryOperand(Register.RBX, 8L)),
            Instruction.Create(Code.Paddb_xmm_xmmm128, Register.XMM1, new MemoryOperand(Register.RBX, 4L)),
            Instruction.Create(Code.Movdqa_xmmm128_xmm, new MemoryOperand(Register.RBX, 1L), Register.XMM1),
        })
        {
            var o = Run(Encode(ins), ctx, data);
            Assert.Equal(Vector.GP, o.Exception);
            Assert.Equal(ctx.XmmLow(1), o.State.XmmLow(1));
            Assert.Equal(data, o.Data);
        }
        // The unaligned forms and 64-bit scalar operands are fine at any address.
        var ok = Run(Encode(Instruction.Create(Code.Movups_xmm_xmmm128, Register.XMM1, new MemoryOperand(Register.RBX, 8L))), ctx, data);
        Assert.Null(ok.Exception);
        Assert.Equal(BitConverter.ToUInt64(data, 8), ok.State.XmmLow(1));
        Assert.Equal(BitConverter.ToUInt64(data, 16), ok.State.XmmHigh(1));
        var scalar = Run(Encode(Instruction.Create(Code.Addsd_xmm_xmmm64, Register.XMM1, new MemoryOperand(Register.RBX, 3L))), ctx, data);
        Assert.Null(scalar.Exception);
    }

    [Fact]
    public void SseWithoutOsfxsrOrWithEmIsUndefinedAndWithTsIsDeviceNotAvailable()
    {
        var ctx = Context();
        var addps = Encode(Instruction.Create(Code.Addps_xmm_xmmm128, Register.XMM1, Register.XMM2));
        Assert.Equal(Vector.UD, Run(addps, ctx, clearCr4: X86.Cr4.OSFXSR).Exception);
        Assert.Equal(Vector.UD, Run(addps, ctx, setCr0: X86.Cr0.EM).Exception);
        var nm = Run(addps, ctx, setCr0: X86.Cr0.TS);
        Assert.Equal(Vector.NM, nm.Exception); // Linux's #NM handler restores the FPU state and clears TS
        Assert.Equal(ctx.XmmLow(1), nm.State.XmmLow(1));
        Assert.Null(Run(addps, ctx).Exception);

        // FXSAVE: CR0.TS or CR0.EM → #NM (SDM Vol. 2A FXSAVE exceptions).
        var fxsave = Encode(Instruction.Create(Code.Fxsave64_m512byte, new MemoryOperand(Register.RBX, 0L)));
        Assert.Equal(Vector.NM, Run(fxsave, ctx, setCr0: X86.Cr0.TS).Exception);
        Assert.Equal(Vector.NM, Run(fxsave, ctx, setCr0: X86.Cr0.EM).Exception);
        // MOVNTI uses only general registers: unaffected by CR0.TS.
        var movnti = Encode(Instruction.Create(Code.Movnti_m64_r64, new MemoryOperand(Register.RBX, 0L), Register.RAX));
        Assert.Null(Run(movnti, ctx, setCr0: X86.Cr0.TS).Exception);
    }

    [Fact]
    public void UnmaskedSimdExceptionRaisesXmOrUdAndLeavesTheDestination()
    {
        var ctx = Context();
        ctx.SetXmm(2, 0, 0); // divisor 0.0
        ctx.Mxcsr = 0x1F80 & ~0x200u; // ZM clear: divide-by-zero unmasked
        var divsd = Encode(Instruction.Create(Code.Divsd_xmm_xmmm64, Register.XMM1, Register.XMM2));
        var o = Run(divsd, ctx);
        Assert.Equal(Vector.XM, o.Exception);
        Assert.Equal(ctx.XmmLow(1), o.State.XmmLow(1));
        Assert.Equal(0x1F80u & ~0x200u | 0x4, o.State.Mxcsr); // ZE recorded
        Assert.Equal(Vector.UD, Run(divsd, ctx, clearCr4: X86.Cr4.OSXMMEXCPT).Exception);
        // Masked: infinity and the flag.
        ctx.Mxcsr = 0x1F80;
        var m = Run(divsd, ctx);
        Assert.Null(m.Exception);
        Assert.Equal(BitConverter.DoubleToUInt64Bits(double.PositiveInfinity), m.State.XmmLow(1));
        Assert.Equal(0x1F84u, m.State.Mxcsr);
    }

    [Fact]
    public void LdmxcsrWithReservedBitsRaisesGeneralProtection()
    {
        var data = new byte[DifferentialRunner.DataSize];
        BitConverter.TryWriteBytes(data.AsSpan(0), 0x1_1F80u);
        var ld = Encode(Instruction.Create(Code.Ldmxcsr_m32, new MemoryOperand(Register.RBX, 0L)));
        var o = Run(ld, Context(), data);
        Assert.Equal(Vector.GP, o.Exception);
        Assert.Equal(0x1F80u, o.State.Mxcsr);
        BitConverter.TryWriteBytes(data.AsSpan(0), 0xFFFFu & ~0x3Fu); // every defined bit incl. DAZ
        var ok = Run(ld, Context(), data);
        Assert.Null(ok.Exception);
        Assert.Equal(0xFFC0u, ok.State.Mxcsr);
    }

    [Fact]
    public void FxsaveFxrstorRoundTripTheWholeState()
    {
        var c = _runner.Cpu;
        var f = c.Fpu;
        var rng = new Random(4);
        f.Control = 0x027F;
        f.Status = 0x3A41; // TOP = 7, C3, C1, IE
        // Tags consistent with the contents (FXRSTOR rebuilds them): R0 zero, R1 valid, R2 unnormal
        // (special), R3 empty, R4 valid, R5 denormal (special), R6 NaN/inf exponent (special), R7 empty.
        f.Tag = 0b11_10_10_00_11_10_00_01;
        f.LastOpcode = 0x5A3;
        f.LastIp = 0x1234_5678_9ABC;
        f.LastDp = 0xFEDC_BA98_7654;
        for (int i = 0; i < 8; i++)
        {
            f.Mantissa[i] = (ulong)rng.NextInt64() | (1UL << 63);
            f.SignExp[i] = (ushort)(0x3FFF + i);
        }
        f.SignExp[0] = 0; f.Mantissa[0] = 0;
        f.Mantissa[2] &= ~(1UL << 63);
        f.SignExp[5] = 0x8000; f.Mantissa[5] >>= 3;
        f.SignExp[6] = 0x7FFF;
        var saved = (f.Control, f.Status, f.Tag, f.LastOpcode, f.LastIp, f.LastDp);
        ulong[] savedMantissa = f.Mantissa.ToArray();
        ushort[] savedSignExp = f.SignExp.ToArray();
        var ctx = Context();
        ctx.Mxcsr = 0x9FC5;
        var code = Encode(
            Instruction.Create(Code.Fxsave64_m512byte, new MemoryOperand(Register.RBX, 0L)),
            Instruction.Create(Code.Pxor_xmm_xmmm128, Register.XMM3, Register.XMM3),
            Instruction.Create(Code.Pxor_xmm_xmmm128, Register.XMM15, Register.XMM15),
            Instruction.Create(Code.Fxrstor64_m512byte, new MemoryOperand(Register.RBX, 0L)));
        var data = new byte[DifferentialRunner.DataSize];
        data.AsSpan(464, 48).Fill(0xA5); // software-available bytes
        // Scribble the live state between FXSAVE and FXRSTOR through the image itself: FXRSTOR must bring back the saved one.
        var o = Run(code, ctx, data);
        Assert.Null(o.Exception);
        Assert.Equal(ctx.XmmLow(3), o.State.XmmLow(3));
        Assert.Equal(ctx.XmmHigh(15), o.State.XmmHigh(15));
        Assert.Equal(0x9FC5u, o.State.Mxcsr);
        Assert.Equal(saved, (f.Control, f.Status, f.Tag, f.LastOpcode, f.LastIp, f.LastDp));
        Assert.Equal(savedMantissa, f.Mantissa);
        Assert.Equal(savedSignExp, f.SignExp);
        // Image layout (SDM Vol. 1 Table 10-2): FCW, FSW, abridged FTW (1 = valid), FOP, FIP, FDP, MXCSR, MXCSR_MASK, ST0 = R[TOP].
        var img = o.Data;
        Assert.Equal(0x027F, BitConverter.ToUInt16(img, 0));
        Assert.Equal(0x3A41, BitConverter.ToUInt16(img, 2));
        Assert.Equal(0b0111_0111, img[4]); // abridged tag: R3 and R7 empty
        Assert.Equal(0x1234_5678_9ABCUL, BitConverter.ToUInt64(img, 8));
        Assert.Equal(0x9FC5u, BitConverter.ToUInt32(img, 24));
        Assert.Equal(0xFFFFu, BitConverter.ToUInt32(img, 28));
        Assert.Equal(savedMantissa[7], BitConverter.ToUInt64(img, 32)); // ST0 = R7 (TOP = 7)
        Assert.Equal(savedMantissa[0], BitConverter.ToUInt64(img, 48)); // ST1 = R0
        Assert.Equal(ctx.XmmLow(15), BitConverter.ToUInt64(img, 160 + 15 * 16));
        Assert.All(img.AsSpan(464, 48).ToArray(), b => Assert.Equal(0xA5, b));
    }

    [Fact]
    public void FxsaveAndFxrstorFaultOnMisalignmentAndReservedMxcsrBits()
    {
        var ctx = Context();
        var mis = Encode(Instruction.Create(Code.Fxsave64_m512byte, new MemoryOperand(Register.RBX, 8L)));
        Assert.Equal(Vector.GP, Run(mis, ctx).Exception);
        var data = new byte[DifferentialRunner.DataSize];
        BitConverter.TryWriteBytes(data.AsSpan(24), 0x2_1F80u);
        data[160] = 0x77;
        var rstor = Encode(Instruction.Create(Code.Fxrstor64_m512byte, new MemoryOperand(Register.RBX, 0L)));
        var o = Run(rstor, ctx, data);
        Assert.Equal(Vector.GP, o.Exception);
        Assert.Equal(ctx.XmmLow(0), o.State.XmmLow(0)); // nothing restored
    }

    /// <summary>MMX aliasing (SDM Vol. 1 9.5, 9.6): MMi is R[i]'s significand; an MMX instruction sets TOP = 0 and all tags valid, EMMS empties them.</summary>
    [Fact]
    public void MmxInstructionsUseThePhysicalX87RegistersAndTags()
    {
        var c = _runner.Cpu;
        c.Fpu.Reset();
        c.Fpu.Top = 5;
        c.Fpu.Mantissa[1] = 0x0102_0304_0506_0708;
        c.Fpu.Mantissa[2] = 0x1010_1010_1010_10FF;
        var o = Run(Encode(Instruction.Create(Code.Paddb_mm_mmm64, Register.MM1, Register.MM2)), Context());
        Assert.Null(o.Exception);
        Assert.Equal(0x1112_1314_1516_1707UL, c.Fpu.Mantissa[1]);
        Assert.Equal(0xFFFF, c.Fpu.SignExp[1]);
        Assert.Equal(0, c.Fpu.Top);
        Assert.Equal(0, c.Fpu.Tag);
        Assert.Null(Run(Encode(Instruction.Create(Code.Emms)), Context()).Exception);
        Assert.Equal(0xFFFF, c.Fpu.Tag);
        var paddb = Encode(Instruction.Create(Code.Paddb_mm_mmm64, Register.MM1, Register.MM2));
        Assert.Equal(Vector.NM, Run(paddb, Context(), setCr0: X86.Cr0.TS).Exception);
        Assert.Equal(Vector.UD, Run(paddb, Context(), setCr0: X86.Cr0.EM).Exception);
        Assert.Equal(0xFFFF, c.Fpu.Tag); // faulting MMX instructions leave the x87 state alone
        c.Fpu.Reset();
    }
}
