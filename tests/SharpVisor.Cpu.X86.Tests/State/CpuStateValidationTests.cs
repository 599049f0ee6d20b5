using SharpVisor.Core;
using SharpVisor.Cpu.X86.Model;
using SharpVisor.Cpu.X86.State;
using SharpVisor.Cpu.X86.Tests.SystemInstructions;

namespace SharpVisor.Cpu.X86.Tests.State;

/// <summary>
/// <see cref="Cpu.RestoreState"/> refuses a state this CPU could never be in — each with
/// <see cref="InvalidStateException"/> naming the field — and leaves the vCPU exactly as it was.
/// </summary>
public class CpuStateValidationTests
{
    /// <summary>Where the state to corrupt comes from: 64-bit mode with live x87/SSE state, 32-bit protected mode, or RESET (real mode).</summary>
    public enum Start { Long, Protected, Reset }

    static CpuState Gpr(CpuState s, int count) => s with { Gpr = new ulong[count] };
    static CpuState Fpu(CpuState s, Func<X87SseState, X87SseState> f) => s with { Fpu = f(s.Fpu) };
    static CpuState Msrs(CpuState s, Func<MsrState, MsrState> f) => s with { Msrs = f(s.Msrs) };
    static CpuState Events(CpuState s, Func<EventState, EventState> f) => s with { Events = f(s.Events) };
    static ulong[] With(ulong[] a, int i, ulong v)
    {
        var copy = (ulong[])a.Clone();
        copy[i] = v;
        return copy;
    }
    static X87Register[] WithRegister(X87Register[] a, int i, X87Register v)
    {
        var copy = (X87Register[])a.Clone();
        copy[i] = v;
        return copy;
    }

    /// <summary>Each case: the start state, the corruption, and a word the refusal must name.</summary>
    static readonly Dictionary<string, (Start Start, Func<CpuState, CpuState> Corrupt, string Names)> s_cases = new()
    {
        ["unknown version"] = (Start.Long, s => s with { Version = 2 }, "version 2"),
        ["15 general registers"] = (Start.Long, s => Gpr(s, 15), "general registers"),
        ["missing x87/SSE part"] = (Start.Long, s => s with { Fpu = null! }, "missing"),
        ["10 fixed MTRRs"] = (Start.Long, s => Msrs(s, m => m with { MtrrFixed = new ulong[10] }), "fixed MTRRs"),

        ["CR0 reserved bit 6"] = (Start.Long, s => s with { Cr0 = s.Cr0 | 0x40 }, "CR0"),
        ["CR0 bit 32"] = (Start.Long, s => s with { Cr0 = s.Cr0 | 1UL << 32 }, "CR0"),
        ["CR0.ET clear"] = (Start.Long, s => s with { Cr0 = s.Cr0 & ~Cr0.ET }, "CR0.ET"),
        ["CR0.PG without PE"] = (Start.Long, s => s with { Cr0 = s.Cr0 & ~Cr0.PE }, "CR0.PG"),
        ["CR0.NW without CD"] = (Start.Protected, s => s with { Cr0 = (s.Cr0 | Cr0.NW) & ~Cr0.CD }, "CR0.NW"),
        ["CR4.VMXE (not advertised)"] = (Start.Long, s => s with { Cr4 = s.Cr4 | Cr4.VMXE }, "CR4"),
        ["EFER reserved bit 12"] = (Start.Long, s => s with { Efer = s.Efer | 1 << 12 }, "EFER"),
        ["EFER.LMA clear with PG and LME"] = (Start.Long, s => s with { Efer = s.Efer & ~Efer.LMA }, "EFER.LMA"),
        ["EFER.LMA set without paging"] = (Start.Protected, s => s with { Efer = Efer.LME | Efer.LMA }, "EFER.LMA"),
        ["IA-32e mode without CR4.PAE"] = (Start.Long, s => s with { Cr4 = s.Cr4 & ~Cr4.PAE }, "PAE"),
        ["CR3 above MAXPHYADDR"] = (Start.Long, s => s with { Cr3 = 1UL << Cpu.PhysAddrBits }, "CR3"),
        ["XCR0 with SSE state"] = (Start.Long, s => s with { Xcr0 = 3 }, "XCR0"),

        ["DS attributes bits 11:8"] = (Start.Long, s => s with { Ds = s.Ds with { Attributes = (ushort)(s.Ds.Attributes | 0x100) } }, "DS"),
        ["DS limit against G"] = (Start.Long, s => s with { Ds = s.Ds with { Limit = 0xFFFF_F000 } }, "DS limit"),
        ["ES limit over 20 bits with G clear"] = (Start.Reset, s => s with { Es = s.Es with { Limit = 0x10_0000 } }, "ES limit"),
        ["CS base over 32 bits"] = (Start.Protected, s => s with { Cs = s.Cs with { Base = 1UL << 32 } }, "CS base"),
        ["FS base not canonical"] = (Start.Long, s => s with { Fs = s.Fs with { Base = 0x0000_8000_0000_0000 } }, "FS/GS base"),
        ["CS a data segment"] = (Start.Protected, s => s with { Cs = s.Cs with { Attributes = 0xC093 } }, "CS attributes"),
        ["CS not present"] = (Start.Reset, s => s with { Cs = s.Cs with { Attributes = 0x1B } }, "CS attributes"),
        ["CS with L and D in IA-32e mode"] = (Start.Long, s => s with { Cs = s.Cs with { Attributes = (ushort)(s.Cs.Attributes | 0x4000) } }, "L and D"),
        ["SS a code segment"] = (Start.Protected, s => s with { Ss = s.Ss with { Attributes = 0xC09B } }, "SS attributes"),
        ["SS read-only"] = (Start.Protected, s => s with { Ss = s.Ss with { Attributes = 0xC091 } }, "SS attributes"),
        ["DS a system segment"] = (Start.Protected, s => s with { Ds = s.Ds with { Attributes = 0x0089, Limit = 0x67 } }, "DS attributes"),
        ["GS execute-only code"] = (Start.Protected, s => s with { Gs = s.Gs with { Attributes = 0xC099 } }, "GS attributes"),
        ["LDTR a TSS"] = (Start.Long, s => s with { Ldtr = s.Ldtr with { Attributes = 0x8B, Limit = 0x67 } }, "LDTR"),
        ["TR an available TSS"] = (Start.Long, s => s with { Tr = s.Tr with { Attributes = 0x89 } }, "TR"),
        ["TR not present"] = (Start.Long, s => s with { Tr = s.Tr with { Attributes = 0x0B } }, "TR"),

        ["RFLAGS reserved bit 3"] = (Start.Long, s => s with { Rflags = s.Rflags | 8 }, "RFLAGS"),
        ["RFLAGS bit 1 clear"] = (Start.Long, s => s with { Rflags = s.Rflags & ~RFlags.Reserved1 }, "RFLAGS"),
        ["RFLAGS bit 22"] = (Start.Long, s => s with { Rflags = s.Rflags | 1 << 22 }, "RFLAGS"),
        ["RFLAGS.VM in IA-32e mode"] = (Start.Long, s => s with { Rflags = s.Rflags | RFlags.VM }, "RFLAGS.VM"),
        ["RFLAGS.VM in real mode"] = (Start.Reset, s => s with { Rflags = s.Rflags | RFlags.VM }, "RFLAGS.VM"),
        ["RIP not canonical in 64-bit mode"] = (Start.Long, s => s with { Rip = 0x0000_8000_0000_0000 }, "RIP"),
        ["RIP over 32 bits in protected mode"] = (Start.Protected, s => s with { Rip = 1UL << 32 }, "RIP"),
        ["CPL 4"] = (Start.Long, s => s with { Cpl = 4 }, "CPL"),
        ["CPL 3 in real mode"] = (Start.Reset, s => s with { Cpl = 3 }, "CPL"),

        ["DR6 reserved bit 12"] = (Start.Long, s => s with { Dr6 = s.Dr6 | 1 << 12 }, "DR6"),
        ["DR6 fixed bits clear"] = (Start.Long, s => s with { Dr6 = 0 }, "DR6"),
        ["DR7 bit 10 clear"] = (Start.Long, s => s with { Dr7 = 0 }, "DR7"),
        ["DR7 bit 32"] = (Start.Long, s => s with { Dr7 = s.Dr7 | 1UL << 32 }, "DR7"),

        ["FOP over 11 bits"] = (Start.Long, s => Fpu(s, f => f with { Fop = 0x800 }), "FOP"),
        ["MXCSR bit 16"] = (Start.Long, s => Fpu(s, f => f with { Mxcsr = f.Mxcsr | 0x1_0000 }), "MXCSR"),
        ["R7 tagged zero holding 1.0"] = (Start.Long, s => Fpu(s, f => f with { Ftw = (ushort)((f.Ftw & 0x3FFF) | 0x4000), Registers = WithRegister(f.Registers, 7, new X87Register(1UL << 63, 0x3FFF)) }), "R7"),
        ["R0 tagged special holding 1.0"] = (Start.Long, s => Fpu(s, f => f with { Ftw = (ushort)((f.Ftw & ~3) | 2), Registers = WithRegister(f.Registers, 0, new X87Register(1UL << 63, 0x3FFF)) }), "R0"),

        ["SYSENTER_CS over 16 bits"] = (Start.Long, s => Msrs(s, m => m with { SysenterCs = 0x1_0000 }), "SYSENTER_CS"),
        ["SYSENTER_EIP not canonical"] = (Start.Long, s => Msrs(s, m => m with { SysenterEip = 0x0000_8000_0000_0000 }), "SYSENTER_EIP"),
        ["LSTAR not canonical"] = (Start.Long, s => Msrs(s, m => m with { Lstar = 0x1234_0000_0000_0000 }), "LSTAR"),
        ["KERNEL_GS_BASE not canonical"] = (Start.Long, s => Msrs(s, m => m with { KernelGsBase = 0x0000_8000_0000_0000 }), "KERNEL_GS_BASE"),
        ["FMASK bit 32"] = (Start.Long, s => Msrs(s, m => m with { Sfmask = 1UL << 32 }), "FMASK"),
        ["TSC_AUX bit 32"] = (Start.Long, s => Msrs(s, m => m with { TscAux = 1UL << 32 }), "TSC_AUX"),
        ["PAT memory type 2"] = (Start.Long, s => Msrs(s, m => m with { Pat = 0x0007_0406_0007_0402 }), "PAT"),
        ["MISC_ENABLE bit 3"] = (Start.Long, s => Msrs(s, m => m with { MiscEnable = 8 }), "MISC_ENABLE"),
        ["SPEC_CTRL bit 3"] = (Start.Long, s => Msrs(s, m => m with { SpecCtrl = 8 }), "SPEC_CTRL"),
        ["MTRR_DEF_TYPE type 2"] = (Start.Long, s => Msrs(s, m => m with { MtrrDefType = 0x802 }), "MTRR_DEF_TYPE"),
        ["variable MTRR mask above MAXPHYADDR"] = (Start.Long, s => Msrs(s, m => m with { MtrrVariable = With(m.MtrrVariable, 1, 1UL << Cpu.PhysAddrBits | 0x800) }), "variable MTRR 0 mask"),
        ["variable MTRR base type 7"] = (Start.Long, s => Msrs(s, m => m with { MtrrVariable = With(m.MtrrVariable, 4, 7) }), "variable MTRR 2 base"),
        ["fixed MTRR type 3"] = (Start.Long, s => Msrs(s, m => m with { MtrrFixed = With(m.MtrrFixed, 5, 0x0303_0303_0303_0303) }), "fixed MTRR 5"),
        ["MCG_STATUS bit 3"] = (Start.Long, s => Msrs(s, m => m with { McgStatus = 8 }), "MCG_STATUS"),
        ["MCG_CTL neither 0 nor all 1s"] = (Start.Long, s => Msrs(s, m => m with { McgCtl = 5 }), "MCG_CTL"),
        ["MC1_STATUS nonzero"] = (Start.Long, s => Msrs(s, m => m with { McBanks = With(m.McBanks, 5, 1) }), "bank 1"),
        ["TPR low bits"] = (Start.Long, s => Msrs(s, m => m with { TprWithoutApic = 0x15 }), "TPR"),

        ["activity state 2"] = (Start.Long, s => Events(s, e => e with { Activity = (ActivityState)2 }), "activity"),
        ["held debug trap BD"] = (Start.Long, s => Events(s, e => e with { InterruptShadow = true, HeldDebugTraps = Cpu.Dr6BD }), "held debug traps"),
        ["held debug trap without a shadow"] = (Start.Long, s => Events(s, e => e with { HeldDebugTraps = Cpu.Dr6BS }), "shadow"),
    };

    public static TheoryData<string> Cases => [.. s_cases.Keys];

    static SysMachine Machine(Start start)
    {
        var m = new SysMachine();
        var c = m.Cpu;
        switch (start)
        {
            case Start.Long:
                m.EnterLongMode();
                c.Rip = 0x10000;
                c.Rsp = 0x80000;
                // Live x87 and SSE state: 1.0 in ST(0) (R7), XMM3, a non-default MXCSR.
                var f = c.SaveState().Fpu;
                c.RestoreState(c.SaveState() with
                {
                    Fpu = f with
                    {
                        Fsw = 7 << 11,
                        Ftw = 0x3FFF,
                        Registers = WithRegister(f.Registers, 7, new X87Register(1UL << 63, 0x3FFF)),
                        Xmm = [.. f.Xmm[..3], new XmmRegister(0x1234, 0x5678), .. f.Xmm[4..]],
                        Mxcsr = 0x1F00,
                    },
                });
                break;
            case Start.Protected:
                CpuSetup.EnterProtectedFlat32(c);
                c.Rip = 0x10000;
                break;
        }
        return m;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void OutOfRangeStateIsRefusedAndChangesNothing(string name)
    {
        var (start, corrupt, names) = s_cases[name];
        using var m = Machine(start);
        var c = m.Cpu;
        CpuState before = c.SaveState();
        var (mode, codeBits, cpl) = (c.Mode, c.CodeBits, c.Cpl);
        CpuState bad = corrupt(before);

        var e = Assert.Throws<InvalidStateException>(() => c.RestoreState(bad));
        Assert.Contains(names, e.Message);
        Assert.StartsWith("cpu0 state refused", e.Message);

        var differences = StateEquality.Differences(before, c.SaveState());
        Assert.True(differences.Count == 0, string.Join("; ", differences));
        Assert.Equal((mode, codeBits, cpl), (c.Mode, c.CodeBits, c.Cpl));
    }

    /// <summary>The starting states themselves are accepted: each refusal above is caused by its corruption alone.</summary>
    [Theory]
    [InlineData(Start.Long)]
    [InlineData(Start.Protected)]
    [InlineData(Start.Reset)]
    public void UncorruptedStatesAreAccepted(Start start)
    {
        using var m = Machine(start);
        CpuState s = m.Cpu.SaveState();
        Assert.Null(CpuStateChecks.FirstProblem(s));
        m.Cpu.RestoreState(s);
        Assert.Equal(s, m.Cpu.SaveState());
    }
}
