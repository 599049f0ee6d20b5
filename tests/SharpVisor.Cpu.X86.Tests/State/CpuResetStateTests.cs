using SharpVisor.Cpu.X86.State;
using SharpVisor.Cpu.X86.Tests.SystemInstructions;

namespace SharpVisor.Cpu.X86.Tests.State;

/// <summary>The state of a vCPU just after RESET, against SDM Vol. 3A 9.1.1, Table 9-1.</summary>
public class CpuResetStateTests
{
    [Fact]
    public void SavedStateAfterResetIsTable9_1()
    {
        using var m = new SysMachine();
        m.Cpu.Rax = 0x1234; // dirty a few registers so Reset has work to do
        m.Cpu.Fpu.Mxcsr = 0;
        m.Cpu.Msr.Pat = 0;
        m.Cpu.Reset();
        CpuState s = m.Cpu.SaveState();

        Assert.Equal(0x2UL, s.Rflags);
        Assert.Equal(0xFFF0UL, s.Rip);
        Assert.Equal(0x6000_0010UL, s.Cr0); // CD, NW, ET
        Assert.Equal((0UL, 0UL, 0UL), (s.Cr2, s.Cr3, s.Cr4));
        // CS: selector F000H, base FFFF0000H, limit FFFFH, present, R/W (code: execute/read), accessed.
        Assert.Equal(new SegmentState(0xF000, 0xFFFF_0000, 0xFFFF, 0x9B), s.Cs);
        // SS, DS, ES, FS, GS: selector 0, base 0, limit FFFFH, present, R/W data, accessed.
        foreach (var seg in new[] { s.Ss, s.Ds, s.Es, s.Fs, s.Gs })
        {
            Assert.Equal(new SegmentState(0, 0, 0xFFFF, 0x93), seg);
        }
        // EDX: 000n06xxH (family 6); the other general registers 0 (no BIST requested).
        Assert.Equal(6UL, (s.Gpr[2] >> 8) & 0xF);
        Assert.Equal(0UL, s.Gpr[2] >> 32);
        for (int i = 0; i < 16; i++)
        {
            if (i != 2)
            {
                Assert.Equal(0UL, s.Gpr[i]);
            }
        }
        // x87: ST0-7 +0.0, FCW 0040H, FSW 0, FTW 5555H, pointers and opcode 0; MMX, XMM 0; MXCSR 1F80H.
        Assert.All(s.Fpu.Registers, r => Assert.Equal(new X87Register(0, 0), r));
        Assert.Equal((ushort)0x0040, s.Fpu.Fcw);
        Assert.Equal((ushort)0, s.Fpu.Fsw);
        Assert.Equal((ushort)0x5555, s.Fpu.Ftw);
        Assert.Equal((0UL, (ushort)0, 0UL, (ushort)0, (ushort)0), (s.Fpu.Fip, s.Fpu.Fcs, s.Fpu.Fdp, s.Fpu.Fds, s.Fpu.Fop));
        Assert.All(s.Fpu.Xmm, x => Assert.Equal(new XmmRegister(0, 0), x));
        Assert.Equal(0x1F80u, s.Fpu.Mxcsr);
        // GDTR, IDTR: base 0, limit FFFFH.
        Assert.Equal(new DescriptorTableState(0, 0xFFFF), s.Gdtr);
        Assert.Equal(new DescriptorTableState(0, 0xFFFF), s.Idtr);
        // LDTR, TR: selector 0, base 0, limit FFFFH, present (an LDT and a busy TSS, as VMX and KVM encode them).
        Assert.Equal(new SegmentState(0, 0, 0xFFFF, 0x82), s.Ldtr);
        Assert.Equal(new SegmentState(0, 0, 0xFFFF, 0x8B), s.Tr);
        // DR0-DR3 0, DR6 FFFF0FF0H, DR7 400H.
        Assert.Equal((0UL, 0UL, 0UL, 0UL), (s.Dr0, s.Dr1, s.Dr2, s.Dr3));
        Assert.Equal(0xFFFF_0FF0UL, s.Dr6);
        Assert.Equal(0x400UL, s.Dr7);
        // XCR0 1; IA32_EFER 0; PAT 0007040600070406H; MTRRs disabled (MTRRdefType 0, ranges 0).
        Assert.Equal(1UL, s.Xcr0);
        Assert.Equal(0UL, s.Efer);
        Assert.Equal(0x0007_0406_0007_0406UL, s.Msrs.Pat);
        Assert.Equal(0UL, s.Msrs.MtrrDefType);
        Assert.All(s.Msrs.MtrrVariable, v => Assert.Equal(0UL, v));
        Assert.All(s.Msrs.MtrrFixed, v => Assert.Equal(0UL, v));
        // Real mode at CPL 0, running, nothing pending.
        Assert.Equal(0, s.Cpl);
        Assert.Equal(new EventState { Activity = ActivityState.Active, InterruptShadow = false, NmiBlocked = false, NmiPending = false, InitPending = false, PendingSipiVector = null, HeldDebugTraps = 0 }, s.Events);
        Assert.Null(CpuStateChecks.FirstProblem(s));
    }
}
