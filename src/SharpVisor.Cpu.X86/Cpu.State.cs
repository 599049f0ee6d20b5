using System.Runtime.Intrinsics;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.State;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// Taking a vCPU's architectural state out as one <see cref="CpuState"/> value and putting it back.
/// The interpreter keeps working on its own fields (<see cref="Regs"/>, <see cref="Rip"/>, the lazy
/// flags...); a state value is built and applied only here, at save/restore time.
/// </summary>
public sealed unsafe partial class Cpu : IPersistent<CpuState>
{
    /// <summary>The component name in <see cref="InvalidStateException"/> messages.</summary>
    string StateComponent => $"cpu{Index}";

    /// <summary>The vCPU's architectural state. Call between instructions, with the vCPU not running.</summary>
    public CpuState SaveState()
    {
        var gpr = new ulong[16];
        for (int i = 0; i < 16; i++)
        {
            gpr[i] = Regs.Gpr[i];
        }
        var x87 = new X87Register[8];
        for (int i = 0; i < 8; i++)
        {
            x87[i] = new X87Register(Fpu.Mantissa[i], Fpu.SignExp[i]);
        }
        var xmm = new XmmRegister[16];
        for (int i = 0; i < 16; i++)
        {
            var v = Fpu.Xmm[i].AsUInt64();
            xmm[i] = new XmmRegister(v.GetElement(0), v.GetElement(1));
        }
        return new CpuState
        {
            Gpr = gpr,
            Rip = Rip,
            Rflags = GetFlags(),
            Cpl = Cpl,
            Es = SegmentState.From(Segs[(int)Seg.ES]),
            Cs = SegmentState.From(Segs[(int)Seg.CS]),
            Ss = SegmentState.From(Segs[(int)Seg.SS]),
            Ds = SegmentState.From(Segs[(int)Seg.DS]),
            Fs = SegmentState.From(Segs[(int)Seg.FS]),
            Gs = SegmentState.From(Segs[(int)Seg.GS]),
            Ldtr = SegmentState.From(Ldtr),
            Tr = SegmentState.From(Tr),
            Gdtr = new DescriptorTableState(GdtBase, GdtLimit),
            Idtr = new DescriptorTableState(IdtBase, IdtLimit),
            Cr0 = Cr0Value,
            Cr2 = Cr2,
            Cr3 = Cr3,
            Cr4 = Cr4Value,
            Xcr0 = Xcr0,
            Efer = EferValue,
            Dr0 = Dr[0],
            Dr1 = Dr[1],
            Dr2 = Dr[2],
            Dr3 = Dr[3],
            Dr6 = Dr[6],
            Dr7 = Dr[7],
            Fpu = new X87SseState
            {
                Fcw = Fpu.Control,
                Fsw = Fpu.Status,
                Ftw = Fpu.Tag,
                Fop = Fpu.LastOpcode,
                Fip = Fpu.LastIp,
                Fcs = Fpu.LastCs,
                Fdp = Fpu.LastDp,
                Fds = Fpu.LastDs,
                Registers = x87,
                Xmm = xmm,
                Mxcsr = Fpu.Mxcsr,
            },
            Msrs = new MsrState
            {
                SysenterCs = Msr.SysenterCs,
                SysenterEsp = Msr.SysenterEsp,
                SysenterEip = Msr.SysenterEip,
                Star = Msr.Star,
                Lstar = Msr.Lstar,
                Cstar = Msr.Cstar,
                Sfmask = Msr.Sfmask,
                KernelGsBase = Msr.KernelGsBase,
                TscAux = Msr.TscAux,
                Pat = Msr.Pat,
                MiscEnable = Msr.MiscEnable,
                SpecCtrl = Msr.SpecCtrl,
                MtrrDefType = Msr.MtrrDefType,
                MtrrVariable = (ulong[])Msr.MtrrVariable.Clone(),
                MtrrFixed = (ulong[])Msr.MtrrFixed.Clone(),
                McgStatus = Msr.McgStatus,
                McgCtl = Msr.McgCtl,
                McBanks = (ulong[])Msr.McBanks.Clone(),
                TscAdjust = Msr.TscAdjust,
                TscOffset = Tsc.Offset,
                TprWithoutApic = Msr.TprWithoutApic,
            },
            Events = new EventState
            {
                // A CPU waiting for SIPI does not run even if HLT had stopped it before; SIPI makes it active.
                Activity = _waitingForSipi ? ActivityState.WaitForSipi : Halted ? ActivityState.Halted : ActivityState.Active,
                InterruptShadow = _interruptShadow,
                NmiBlocked = NmiBlocked,
                NmiPending = _nmiPending,
                InitPending = _initPending,
                PendingSipiVector = _sipiVector >= 0 ? (byte)_sipiVector : null,
                HeldDebugTraps = _heldDebugTraps,
            },
        };
    }

    /// <summary>
    /// Makes <paramref name="state"/> this vCPU's state, whole or not at all: it is checked first
    /// (<see cref="CpuStateChecks"/>), then every field is set, everything derived is recomputed and
    /// the TLBs and decoded blocks are dropped. Call with the vCPU not running.
    /// </summary>
    /// <exception cref="InvalidStateException">The state is out of range; the vCPU is unchanged.</exception>
    public void RestoreState(CpuState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (CpuStateChecks.FirstProblem(state) is string problem)
        {
            throw new InvalidStateException(StateComponent, problem);
        }

        for (int i = 0; i < 16; i++)
        {
            Regs.Gpr[i] = state.Gpr[i];
        }
        Rip = state.Rip;
        SetArithFlags(state.Rflags);
        FlagsOther = state.Rflags & ~RFlags.Arith;
        Segs[(int)Seg.ES] = state.Es.ToRegister();
        Segs[(int)Seg.CS] = state.Cs.ToRegister();
        Segs[(int)Seg.SS] = state.Ss.ToRegister();
        Segs[(int)Seg.DS] = state.Ds.ToRegister();
        Segs[(int)Seg.FS] = state.Fs.ToRegister();
        Segs[(int)Seg.GS] = state.Gs.ToRegister();
        Ldtr = state.Ldtr.ToRegister();
        Tr = state.Tr.ToRegister();
        (GdtBase, GdtLimit) = (state.Gdtr.Base, state.Gdtr.Limit);
        (IdtBase, IdtLimit) = (state.Idtr.Base, state.Idtr.Limit);
        Cr0Value = state.Cr0;
        Cr2 = state.Cr2;
        Cr3 = state.Cr3;
        Cr4Value = state.Cr4;
        Xcr0 = state.Xcr0;
        EferValue = state.Efer;
        Dr[0] = state.Dr0;
        Dr[1] = state.Dr1;
        Dr[2] = state.Dr2;
        Dr[3] = state.Dr3;
        Dr[4] = Dr[5] = 0; // DR4/DR5 are aliases of DR6/DR7 (SDM 18.2.2); the slots are never read
        Dr[6] = state.Dr6;
        Dr[7] = state.Dr7;

        RestoreFpu(state.Fpu);
        RestoreMsrs(state.Msrs);

        var events = state.Events;
        Halted = events.Activity == ActivityState.Halted;
        _waitingForSipi = events.Activity == ActivityState.WaitForSipi;
        _interruptShadow = events.InterruptShadow;
        NmiBlocked = events.NmiBlocked;
        _nmiPending = events.NmiPending;
        _initPending = events.InitPending;
        _sipiVector = events.PendingSipiVector is byte v ? v : -1;
        _heldDebugTraps = events.HeldDebugTraps;

        // Derived state: the mode from CR0/EFER/RFLAGS/CS, then the saved CPL (not re-derived:
        // see CpuState.Cpl), then everything that follows from them.
        Mode = ModeOf(Cr0Value, EferValue, FlagsOther, Segs[(int)Seg.CS].Attributes);
        Cpl = state.Cpl;
        UpdateDerivedState();
        FlushTlb(includeGlobal: true);
        FlushCodeCache();
        UpdateDebugState();
        _breakpointHits = 0;
        _noSingleStepTrap = false;
        _deliveringVector = NoEvent;
        ExitBlock = false;
        _irqCheck = true; // the APIC may hold an interrupt for us: look once
    }

    void RestoreFpu(X87SseState f)
    {
        Fpu.Control = f.Fcw;
        Fpu.Status = f.Fsw;
        Fpu.Tag = f.Ftw;
        Fpu.LastOpcode = f.Fop;
        Fpu.LastIp = f.Fip;
        Fpu.LastCs = f.Fcs;
        Fpu.LastDp = f.Fdp;
        Fpu.LastDs = f.Fds;
        for (int i = 0; i < 8; i++)
        {
            Fpu.Mantissa[i] = f.Registers[i].Significand;
            Fpu.SignExp[i] = f.Registers[i].SignExponent;
        }
        for (int i = 0; i < 16; i++)
        {
            Fpu.Xmm[i] = Vector128.Create(f.Xmm[i].Low, f.Xmm[i].High).AsByte();
        }
        Fpu.Mxcsr = f.Mxcsr;
    }

    void RestoreMsrs(MsrState m)
    {
        Msr.SysenterCs = m.SysenterCs;
        Msr.SysenterEsp = m.SysenterEsp;
        Msr.SysenterEip = m.SysenterEip;
        Msr.Star = m.Star;
        Msr.Lstar = m.Lstar;
        Msr.Cstar = m.Cstar;
        Msr.Sfmask = m.Sfmask;
        Msr.KernelGsBase = m.KernelGsBase;
        Msr.TscAux = m.TscAux;
        Msr.Pat = m.Pat;
        Msr.MiscEnable = m.MiscEnable;
        Msr.SpecCtrl = m.SpecCtrl;
        Msr.MtrrDefType = m.MtrrDefType;
        m.MtrrVariable.CopyTo(Msr.MtrrVariable);
        m.MtrrFixed.CopyTo(Msr.MtrrFixed);
        Msr.McgStatus = m.McgStatus;
        Msr.McgCtl = m.McgCtl;
        m.McBanks.CopyTo(Msr.McBanks);
        Msr.TscAdjust = m.TscAdjust;
        Tsc.Offset = m.TscOffset;
        Msr.TprWithoutApic = m.TprWithoutApic;
    }
}
