using SharpVisor.Cpu.X86.Model;
using static Iced.Intel.AssemblerRegisters;

namespace SharpVisor.Cpu.X86.Tests.SystemInstructions;

/// <summary>
/// Machine-check architecture registers (SDM Vol. 3B chapter 16). Linux's mce core
/// (arch/x86/kernel/cpu/mce/core.c) needs CPUID MCE+MCA, sets CR4.MCE, reads IA32_MCG_CAP for the
/// bank count, writes all 1s to IA32_MCG_CTL (MCG_CTL_P) and to every IA32_MCi_CTL, reads them back
/// and clears every IA32_MCi_STATUS; its poll timer then reads MCi_STATUS periodically.
/// </summary>
public class MachineCheckTests
{
    const ulong Code = 0x10000;

    sealed class Fixture : IDisposable
    {
        public readonly SysMachine M = new();
        public Cpu C => M.Cpu;

        public Fixture()
        {
            M.EnterLongMode();
            C.Rsp = 0x70000;
            M.Asm(Code, 64, a => { a.wrmsr(); a.rdmsr(); a.mov(cr4, rax); a.mov(rbx, cr4); });
        }

        public int? Write(uint msr, ulong v)
        {
            C.Rip = Code;
            C.Rcx = msr;
            C.Rax = (uint)v;
            C.Rdx = v >> 32;
            return C.StepForTest();
        }

        public ulong Read(uint msr)
        {
            C.Rip = Code + 2;
            C.Rcx = msr;
            Assert.Null(C.StepForTest());
            return (C.Rdx << 32) | (uint)C.Rax;
        }

        public int? ReadFault(uint msr)
        {
            C.Rip = Code + 2;
            C.Rcx = msr;
            return C.StepForTest();
        }

        public void Dispose() => M.Dispose();
    }

    /// <summary>CPUID.1:EDX MCE (bit 7) and MCA (bit 14) — Linux's mce_available() needs both (else "Unable to init MCE device (rc: -5)").</summary>
    [Fact]
    public void CpuidAdvertisesMceAndMca()
    {
        var (_, _, _, edx) = new CpuIdModel().Query(1, 0, 0);
        Assert.NotEqual(0u, edx & (1u << 7));
        Assert.NotEqual(0u, edx & (1u << 14));
    }

    /// <summary>CR4.MCE (bit 6) can be set by MOV CR4 (Linux: cr4_set_bits(X86_CR4_MCE) in __mcheck_cpu_init_generic).</summary>
    [Fact]
    public void Cr4MceIsSettable()
    {
        using var f = new Fixture();
        f.C.Rax = f.C.Cr4Value | Cr4.MCE;
        f.C.Rip = Code + 4;
        Assert.Null(f.C.StepForTest());
        Assert.Null(f.C.StepForTest());
        Assert.NotEqual(0UL, f.C.Rbx & Cr4.MCE);
    }

    /// <summary>IA32_MCG_CAP (SDM 16.3.1.1): 10 banks, MCG_CTL_P; no CMCI/SER/LMCE/EXT; read-only (#GP on write).</summary>
    [Fact]
    public void McgCapReportsTenBanksAndIsReadOnly()
    {
        using var f = new Fixture();
        ulong cap = f.Read(MsrIndex.McgCap);
        Assert.Equal(10UL, cap & 0xFF);
        Assert.NotEqual(0UL, cap & (1UL << 8));                                // MCG_CTL_P
        Assert.Equal(0UL, cap & ((1UL << 9) | (1UL << 10) | (1UL << 24) | (1UL << 27))); // EXT, CMCI, SER, LMCE
        Assert.Equal(Vector.GP, f.Write(MsrIndex.McgCap, cap));
    }

    /// <summary>IA32_MCG_CTL (SDM 16.3.1.3): all 1s or all 0s; another value is refused with #GP and changes nothing.</summary>
    [Fact]
    public void McgCtlAcceptsAllOnesOrZero()
    {
        using var f = new Fixture();
        Assert.Null(f.Write(MsrIndex.McgCtl, ulong.MaxValue));
        Assert.Equal(ulong.MaxValue, f.Read(MsrIndex.McgCtl));
        Assert.Equal(Vector.GP, f.Write(MsrIndex.McgCtl, 5));
        Assert.Equal(ulong.MaxValue, f.Read(MsrIndex.McgCtl));
        Assert.Null(f.Write(MsrIndex.McgCtl, 0));
        Assert.Equal(0UL, f.Read(MsrIndex.McgCtl));
    }

    /// <summary>IA32_MCG_STATUS (SDM 16.3.1.2): RIPV/EIPV/MCIP writable (the #MC handler clears MCIP); reserved bits #GP.</summary>
    [Fact]
    public void McgStatusWritableBitsAndReservedBits()
    {
        using var f = new Fixture();
        Assert.Equal(0UL, f.Read(MsrIndex.McgStatus));
        Assert.Null(f.Write(MsrIndex.McgStatus, 4));
        Assert.Equal(4UL, f.Read(MsrIndex.McgStatus));
        Assert.Equal(Vector.GP, f.Write(MsrIndex.McgStatus, 8)); // LMCE_S without MCG_LMCE_P
        Assert.Equal(4UL, f.Read(MsrIndex.McgStatus));
        Assert.Null(f.Write(MsrIndex.McgStatus, 0));
        Assert.Equal(0UL, f.Read(MsrIndex.McgStatus));
    }

    /// <summary>IA32_MCi_CTL (SDM 16.3.2.1): one enable bit per error type; the first and last bank keep what is written.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(9)]
    public void McCtlRoundTrips(int bank)
    {
        using var f = new Fixture();
        uint msr = MsrIndex.Mc0Ctl + 4 * (uint)bank;
        Assert.Null(f.Write(msr, ulong.MaxValue));
        Assert.Equal(ulong.MaxValue, f.Read(msr));
        Assert.Null(f.Write(msr, 0xFFFF_FFFF_FFFF_FBFF)); // bit 10 cleared, as Linux's K8 GART quirk does
        Assert.Equal(0xFFFF_FFFF_FFFF_FBFFUL, f.Read(msr));
    }

    /// <summary>
    /// IA32_MCi_STATUS/ADDR/MISC (SDM 16.3.2.2-16.3.2.4): read 0 (no error logged), can be cleared with
    /// 0, and writing 1s is #GP.
    /// </summary>
    [Theory]
    [InlineData(1)] // STATUS
    [InlineData(2)] // ADDR
    [InlineData(3)] // MISC
    public void McStatusAddrMiscOnlyAcceptZero(int k)
    {
        using var f = new Fixture();
        uint msr = MsrIndex.Mc0Ctl + 4 * 3 + (uint)k;
        Assert.Equal(0UL, f.Read(msr));
        Assert.Null(f.Write(msr, 0));
        Assert.Equal(Vector.GP, f.Write(msr, 1UL << 63));
        Assert.Equal(0UL, f.Read(msr));
    }

    /// <summary>No bank 10 (MSR 428H) and no IA32_MCi_CTL2 (280H, CMCI not advertised): #GP like any absent MSR.</summary>
    [Theory]
    [InlineData(0x428u)]
    [InlineData(0x280u)]
    public void MsrsBeyondTheBanksDoNotExist(uint msr)
    {
        using var f = new Fixture();
        Assert.Equal(Vector.GP, f.ReadFault(msr));
    }

    /// <summary>SDM Vol. 3A Table 9-1: INIT leaves the machine-check registers unchanged.</summary>
    [Fact]
    public void InitKeepsMachineCheckRegisters()
    {
        using var f = new Fixture();
        Assert.Null(f.Write(MsrIndex.Mc0Ctl + 8, ulong.MaxValue));
        Assert.Null(f.Write(MsrIndex.McgCtl, ulong.MaxValue));
        f.C.Reset();
        Assert.Equal(ulong.MaxValue, f.C.Msr.McBanks[8]);
        Assert.Equal(ulong.MaxValue, f.C.Msr.McgCtl);
    }
}
