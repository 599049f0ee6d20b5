using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.X87;

/// <summary>
/// Interpreter-only: #NM (CR0.EM, CR0.TS, and WAIT's CR0.MP+TS rule, SDM Vol. 3A table 2-2) and
/// the deferred #MF of an unmasked exception with CR0.NE=1 (SDM Vol. 1 §8.6) — behaviour the host
/// cannot show without killing the test process.
/// </summary>
public sealed unsafe class X87ExceptionTests
{
    static InterpreterMachine Machine(ulong cr0Set = 0, ulong cr0Clear = 0)
    {
        var m = new InterpreterMachine();
        m.Cpu.Cr0Value = (m.Cpu.Cr0Value | cr0Set) & ~cr0Clear;
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress;
        return m;
    }

    [Fact]
    public void FninitWorksAndSetsTheInitialState()
    {
        using var m = Machine();
        m.Cpu.Fpu.Control = 0;
        m.Cpu.Fpu.Status = 0x3FFF;
        m.Cpu.Fpu.Tag = 0;
        m.LoadBytes([0xDB, 0xE3, 0xDF, 0xE0]); // fninit; fnstsw ax
        Assert.Null(m.Run());
        Assert.Equal(0x037F, m.Cpu.Fpu.Control);
        Assert.Equal(0xFFFF, m.Cpu.Fpu.Tag);
        Assert.Equal(0UL, m.Cpu.Rax & 0xFFFF);
    }

    /// <summary>
    /// Linux's FPU detection (arch/x86/kernel/fpu/init.c, fpu__init_system_early_generic): with CR0.TS
    /// and EM clear, FNINIT; FNSTSW m16; FNSTCW m16 must give FSW = 0 and (FCW &amp; 0x103F) == 0x003F,
    /// else the kernel decides there is no FPU.
    /// </summary>
    [Fact]
    public void LinuxFpuProbeSeesAnFpu()
    {
        using var m = Machine(Cr0.NE | Cr0.MP, Cr0.TS | Cr0.EM);
        m.Ram.TryWrite(InterpreterMachine.DataAddress, new byte[] { 0xFF, 0xFF, 0xFF, 0xFF });
        m.LoadBytes([0xDB, 0xE3, 0xDD, 0x3B, 0xD9, 0x7B, 0x02]); // fninit; fnstsw [rbx]; fnstcw [rbx+2]
        Assert.Null(m.Run());
        ushort fsw = BitConverter.ToUInt16(m.Ram.GetSpan(InterpreterMachine.DataAddress, 2));
        ushort fcw = BitConverter.ToUInt16(m.Ram.GetSpan(InterpreterMachine.DataAddress + 2, 2));
        Assert.Equal(0, fsw);
        Assert.Equal(0x003F, fcw & 0x103F);
    }

    [Theory]
    [InlineData(Cr0.EM)]
    [InlineData(Cr0.TS)]
    public void X87InstructionsRaiseNmWhenEmOrTsIsSet(ulong bit)
    {
        byte[][] codes = [[0xDB, 0xE3], [0xDF, 0xE0], [0xD9, 0xE8], [0xD8, 0xC1], [0xDD, 0x33], [0xD9, 0x3B]];
        foreach (var code in codes)
        {
            using var m = Machine(bit);
            m.Cpu.Fpu.Control = 0x1234;
            m.LoadBytes(code);
            Assert.Equal(Vector.NM, m.Run());
            Assert.Equal(InterpreterMachine.CodeAddress, m.Cpu.Rip);
            Assert.Equal(0x1234, m.Cpu.Fpu.Control); // no effect
        }
    }

    [Theory]
    [InlineData(Cr0.TS | Cr0.MP, true)]
    [InlineData(Cr0.TS, false)]
    [InlineData(Cr0.EM | Cr0.MP, false)]
    public void WaitRaisesNmOnlyWithMpAndTs(ulong set, bool faults)
    {
        using var m = Machine(set, Cr0.MP & ~set);
        m.LoadBytes([0x9B]);
        Assert.Equal(faults ? Vector.NM : null, m.Run());
    }

    [Fact]
    public void UnmaskedExceptionFaultsAtTheNextWaitingInstruction()
    {
        using var m = Machine(Cr0.NE);
        // FLDCW 0x037E (IM unmasked); FLDZ; FLDZ; FDIV st0, st1 (0/0: IE, pending); FNSTSW ax (no-wait, fine); FWAIT (#MF)
        m.Ram.TryWrite(InterpreterMachine.DataAddress, BitConverter.GetBytes((ushort)0x037E));
        byte[] code = [0xDB, 0xE3, 0xD9, 0x2B, 0xD9, 0xEE, 0xD9, 0xEE, 0xD8, 0xF1, 0xDF, 0xE0, 0x9B];
        m.LoadBytes(code);
        Assert.Equal(Vector.MF, m.Run());
        Assert.Equal(InterpreterMachine.CodeAddress + (ulong)code.Length - 1, m.Cpu.Rip); // at the FWAIT
        ushort sw = (ushort)m.Cpu.Rax;
        Assert.Equal(0x8081, sw & 0x80FF); // B, ES, IE; ST0 unchanged (still +0), TOP = 6
        Assert.Equal(6, (sw >> 11) & 7);
        Assert.Equal(0, m.Cpu.Fpu.SignExp[6]);
        Assert.Equal(0UL, m.Cpu.Fpu.Mantissa[6]);
        // The FPU pointers name the FDIV (non-control), not FNSTSW/FWAIT.
        Assert.Equal(InterpreterMachine.CodeAddress + 8, m.Cpu.Fpu.LastIp);
        Assert.Equal(0x0F1, m.Cpu.Fpu.LastOpcode); // D8 F1 → 000 1111 0001
    }

    [Fact]
    public void FnclexClearsThePendingExceptionAndFninitToo()
    {
        foreach (byte[] clear in new[] { new byte[] { 0xDB, 0xE2 }, [0xDB, 0xE3] })
        {
            using var m = Machine(Cr0.NE);
            m.Ram.TryWrite(InterpreterMachine.DataAddress, BitConverter.GetBytes((ushort)0x037E));
            m.LoadBytes([0xDB, 0xE3, 0xD9, 0x2B, 0xD9, 0xEE, 0xD9, 0xEE, 0xD8, 0xF1, .. clear, 0x9B, 0xD9, 0xE8]);
            Assert.Null(m.Run());
        }
    }

    [Fact]
    public void WaitingFormsOfControlInstructionsFaultButNoWaitFormsDoNot()
    {
        // FSTSW AX (9B DF E0) waits: #MF; FNSTSW AX does not; FINIT (9B DB E3) waits.
        foreach (var (code, faults) in new (byte[], bool)[] { ([0x9B, 0xDF, 0xE0], true), ([0xDF, 0xE0], false), ([0x9B, 0xDB, 0xE3], true), ([0xD9, 0x3B], false), ([0xD9, 0x2B], true) })
        {
            using var m = Machine(Cr0.NE);
            m.Cpu.Fpu.Control = 0x037E;
            m.Cpu.Fpu.Status = 0x8081; // IE unmasked and pending
            m.Ram.TryWrite(InterpreterMachine.DataAddress, BitConverter.GetBytes((ushort)0x037F));
            m.LoadBytes(code);
            Assert.Equal(faults ? Vector.MF : null, m.Run());
        }
    }

    [Fact]
    public void FldcwUnmaskingASetFlagMakesItPending()
    {
        using var m = Machine(Cr0.NE);
        m.Cpu.Fpu.Control = 0x037F;
        m.Cpu.Fpu.Status = 0x0020; // PE set, masked
        m.Ram.TryWrite(InterpreterMachine.DataAddress, BitConverter.GetBytes((ushort)0x035F)); // PM cleared
        m.LoadBytes([0xD9, 0x2B, 0xDF, 0xE0, 0xD9, 0xD0]); // fldcw; fnstsw ax; fnop → #MF
        Assert.Equal(Vector.MF, m.Run());
        Assert.Equal(0x80A0UL, m.Cpu.Rax & 0xFFFF);
    }

    /// <summary>
    /// Intel: an unmasked #D on FLD m32/m64 leaves TOP and the registers unchanged (SDM Vol. 1
    /// §8.5.2). The AMD host loads the value anyway, so this is checked here rather than against it.
    /// </summary>
    [Fact]
    public void FldOfADenormalWithDenormalUnmaskedDoesNotPush()
    {
        using var m = Machine(Cr0.NE);
        m.Cpu.Fpu.Control = 0x037D; // DM unmasked
        m.Ram.TryWrite(InterpreterMachine.DataAddress, BitConverter.GetBytes(0x0000_0001u)); // smallest single denormal
        m.LoadBytes([0xD9, 0x03, 0xDF, 0xE0]); // fld dword [rbx]; fnstsw ax
        Assert.Null(m.Run());
        Assert.Equal(0x8082UL, m.Cpu.Rax & 0xFFFF); // B, ES, DE; TOP still 0
        Assert.Equal(0xFFFF, m.Cpu.Fpu.Tag);
    }

    [Fact]
    public void StackOverflowMaskedPushesTheIndefinite()
    {
        using var m = Machine(Cr0.NE);
        var code = new List<byte> { 0xDB, 0xE3 };
        for (int i = 0; i < 9; i++) code.AddRange([0xD9, 0xE8]); // 9 × fld1
        code.AddRange([0xDF, 0xE0]);
        m.LoadBytes([.. code]);
        Assert.Null(m.Run());
        Assert.Equal(0x0241UL, m.Cpu.Rax & 0x3FFF & ~0x3800UL); // C1, SF, IE
        int top = (int)(m.Cpu.Rax >> 11) & 7;
        Assert.Equal(7, top);
        Assert.Equal(0xFFFF, m.Cpu.Fpu.SignExp[7]);
        Assert.Equal(0xC000_0000_0000_0000UL, m.Cpu.Fpu.Mantissa[7]);
    }

    [Fact]
    public void AFaultingStoreHasNoEffect()
    {
        using var m = Machine(Cr0.NE);
        m.LoadBytes([0xDB, 0xE3, 0xD9, 0xE8, 0xDD, 0x33]); // fninit; fld1; fnsave [rbx]
        m.Run(2);
        m.Unmap(InterpreterMachine.DataAddress + 0x1000);
        m.Cpu.Regs.Gpr[3] = InterpreterMachine.DataAddress + 0x1000 - 50; // FNSAVE straddles into the unmapped page
        Assert.Equal(Vector.PF, m.Run());
        Assert.Equal(7, m.Cpu.Fpu.Top); // not re-initialised
        Assert.Equal(0, m.Ram.GetSpan(InterpreterMachine.DataAddress + 0x1000 - 50, 50).ToArray().Count(b => b != 0));
    }
}
