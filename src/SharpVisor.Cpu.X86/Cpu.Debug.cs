using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// Debug exceptions (SDM Vol. 3B chapter 18: 18.2 debug registers, 18.3 debug exceptions).
/// <para>
/// Cost model: nothing here runs while <see cref="_debugActive"/> is false, which is the case
/// unless EFLAGS.TF or EFLAGS.RF is set or DR7 enables a breakpoint. The run loop tests that one
/// flag once per block; when it is set, the loop executes one instruction at a time through
/// <see cref="StepWithDebugChecks"/>. Data breakpoints never touch the memory fast path: while one
/// is armed, TLB fills leave the read/write tags of its page invalid (see <see cref="Fill"/>), so
/// accesses to that page, and only that page, take ReadSlow/WriteSlow, which match the breakpoints.
/// </para>
/// </summary>
public sealed unsafe partial class Cpu
{
    /// <summary>DR6 status bits (SDM Vol. 3B 18.2.3): B0-B3 (breakpoint n met), BD (debug-register access detected), BS (single step).</summary>
    public const ulong Dr6B0to3 = 0xF, Dr6BD = 1 << 13, Dr6BS = 1 << 14;
    /// <summary>DR6 bits that read as 1 when their feature is absent (SDM Vol. 3B 18.2.3, Figure 18-1).</summary>
    public const ulong Dr6Fixed = 0xFFFF_0FF0;
    /// <summary>DR7.GD, general-detect enable (SDM Vol. 3B 18.2.4).</summary>
    public const ulong Dr7GD = 1 << 13;

    /// <summary>TF, RF or a DR7 enable is set (or a MOV SS delayed a debug trap): the loop single-steps with checks.</summary>
    bool _debugActive;
    /// <summary>Enabled breakpoints by kind, one bit per DRn (DR7 L/G enables and R/W fields, SDM 18.2.4).</summary>
    byte _execBreakpoints, _dataBreakpoints, _ioBreakpoints;
    /// <summary>R/W = 11 (reads too) among <see cref="_dataBreakpoints"/>; the others are write-only (R/W = 01).</summary>
    byte _readWriteBreakpoints;
    /// <summary>First and last byte of each breakpoint's range (address aligned down to LEN, SDM 18.2.5).</summary>
    readonly ulong[] _bpStart = new ulong[4], _bpEnd = new ulong[4];
    /// <summary>B0-B3 of data/I/O breakpoints met by the instruction being executed.</summary>
    uint _breakpointHits;
    /// <summary>Debug traps held back by MOV SS / POP SS until after the next instruction (SDM Vol. 3A 6.8.3).</summary>
    ulong _heldDebugTraps;
    /// <summary>Set when the current instruction delivered INT n / INT3 / INTO / INT1 (no single-step trap after them, SDM 18.3.1.4) or its own trap (SYSRET).</summary>
    bool _noSingleStepTrap;

    /// <summary>True while TF is set or any data/I/O breakpoint is armed: REP string instructions then run one iteration per step.</summary>
    public bool RepeatOneIterationAtATime => (FlagsOther & RFlags.TF) != 0 || (_dataBreakpoints | _ioBreakpoints) != 0;

    /// <summary>True when a data breakpoint is armed: callers with their own host-pointer paths must check it.</summary>
    public bool DataBreakpointsArmed => _dataBreakpoints != 0;

    /// <summary>True when an I/O breakpoint (R/W = 10 with CR4.DE) is armed; IN/OUT/INS/OUTS then call <see cref="NoteIoAccess"/>.</summary>
    public bool IoBreakpointsArmed => _ioBreakpoints != 0;

    /// <summary>
    /// Recomputes the breakpoint masks from DR0-DR3, DR7 and CR4.DE, and the "checks needed" flag.
    /// Called whenever one of them, or EFLAGS.TF/RF, may have changed. A change in the armed data
    /// breakpoints flushes the TLB so that no fast-path entry survives for a watched page.
    /// </summary>
    public void UpdateDebugState()
    {
        ulong dr7 = Dr[7];
        byte exec = 0, data = 0, rw = 0, io = 0;
        for (int i = 0; i < 4; i++)
        {
            if (((dr7 >> (2 * i)) & 3) == 0)
            {
                continue; // neither Li nor Gi
            }
            int kind = (int)(dr7 >> (16 + 4 * i)) & 3;
            // LEN (SDM 18.2.4): 00 = 1 byte, 01 = 2, 11 = 4, 10 = 8; the address is aligned down to it (18.2.5).
            ulong len = ((dr7 >> (18 + 4 * i)) & 3) switch { 0 => 1UL, 1 => 2UL, 3 => 4UL, _ => 8UL };
            ulong start, end;
            switch (kind)
            {
                case 0:
                    // Instruction breakpoints must have LEN = 00 (SDM 18.2.5); the address is matched as is.
                    exec |= (byte)(1 << i);
                    start = end = Dr[i];
                    break;
                case 2:
                    if ((Cr4Value & Cr4.DE) == 0)
                    {
                        // Undefined without CR4.DE (SDM 18.2.4): this CPU never triggers it.
                        Log.Once("dr7-rw10", "cpu", $"cpu{Index}: DR7 R/W{i}=10 with CR4.DE clear is undefined; the breakpoint never triggers");
                        continue;
                    }
                    io |= (byte)(1 << i);
                    start = Dr[i] & 0xFFFF & ~(len - 1);
                    end = start + len - 1;
                    break;
                default:
                    data |= (byte)(1 << i);
                    if (kind == 3)
                    {
                        rw |= (byte)(1 << i);
                    }
                    start = Dr[i] & ~(len - 1);
                    end = start + len - 1;
                    break;
            }
            _bpStart[i] = start;
            _bpEnd[i] = end;
        }
        bool dataChanged = data != _dataBreakpoints || rw != _readWriteBreakpoints || data != 0;
        _execBreakpoints = exec;
        _dataBreakpoints = data;
        _readWriteBreakpoints = rw;
        _ioBreakpoints = io;
        if (dataChanged)
        {
            FlushTlb(includeGlobal: true);
        }
        UpdateDebugActive();
    }

    /// <summary>Recomputes <see cref="_debugActive"/>; when it turns on mid-block, the block ends so the next instruction is checked.</summary>
    void UpdateDebugActive()
    {
        bool active = (FlagsOther & (RFlags.TF | RFlags.RF)) != 0 || (_execBreakpoints | _dataBreakpoints | _ioBreakpoints) != 0 || _heldDebugTraps != 0;
        if (active && !_debugActive)
        {
            ExitBlock = true;
        }
        _debugActive = active;
    }

    /// <summary>Whether a TLB fill for linear page <paramref name="page"/> must leave reads (and writes) on the slow path.</summary>
    void DataBreakpointTags(ulong page, ref TlbEntry e)
    {
        for (int i = 0; i < 4; i++)
        {
            if ((_dataBreakpoints & (1 << i)) != 0 && (_bpStart[i] & ~0xFFFUL) == page)
            {
                e.WriteTag = TlbEntry.Invalid;
                if ((_readWriteBreakpoints & (1 << i)) != 0)
                {
                    e.ReadTag = TlbEntry.Invalid;
                }
            }
        }
    }

    /// <summary>Records data breakpoints met by an access of <paramref name="size"/> bytes at linear <paramref name="la"/> (SDM 18.3.1.2).</summary>
    void NoteDataAccess(ulong la, int size, bool write)
    {
        uint candidates = write ? _dataBreakpoints : _readWriteBreakpoints;
        ulong last = la + (ulong)size - 1;
        for (int i = 0; i < 4; i++)
        {
            if ((candidates & (1u << i)) != 0 && la <= _bpEnd[i] && last >= _bpStart[i])
            {
                _breakpointHits |= 1u << i;
            }
        }
    }

    /// <summary>Records I/O breakpoints met by an IN/OUT/INS/OUTS of <paramref name="size"/> bytes at <paramref name="port"/> (SDM 18.3.1.2).</summary>
    public void NoteIoAccess(ushort port, int size)
    {
        ulong last = (ulong)port + (ulong)size - 1;
        for (int i = 0; i < 4; i++)
        {
            if ((_ioBreakpoints & (1 << i)) != 0 && port <= _bpEnd[i] && last >= _bpStart[i])
            {
                _breakpointHits |= 1u << i;
            }
        }
    }

    /// <summary>
    /// Executes one instruction with the debug checks, in the priority order of SDM Vol. 3A Table 6-2:
    /// the instruction breakpoint fault (priority 7, after pending events, which the loop took
    /// already) before the fetch; after the instruction, its single-step and data/I/O breakpoint
    /// traps (priority 4, before the next events). Returns the instructions retired (0 or 1).
    /// </summary>
    int StepWithDebugChecks()
    {
        // Instruction breakpoints are faults, suppressed for one instruction by RF (SDM 18.3.1.1).
        if (_execBreakpoints != 0 && (FlagsOther & RFlags.RF) == 0)
        {
            ulong la = (Regs.SegBase[(int)Seg.CS] + Rip) & Regs.LinearMask;
            ulong hits = 0;
            for (int i = 0; i < 4; i++)
            {
                if ((_execBreakpoints & (1 << i)) != 0 && (_bpStart[i] & Regs.LinearMask) == la)
                {
                    hits |= 1UL << i;
                }
            }
            if (hits != 0)
            {
                Dr[6] = (Dr[6] & ~Dr6B0to3) | hits;
                throw Fault(Vector.DB); // RIP stays on the instruction; RF is not set for #DB (SDM 18.3.1.1)
            }
        }

        Block b = FetchBlock();
        ref Op op = ref b.Ops[0];
        ulong rip = Rip;
        ulong flagsBefore = FlagsOther;
        _breakpointHits = 0;
        _noSingleStepTrap = false;
        _interruptShadow = false;
        int retired = Execute(b, 1);

        // The instruction completed. RF is cleared after every instruction except one that loaded it
        // (IRETD/IRETQ); a REP string instruction stopped between iterations sets it so its own
        // instruction breakpoint does not fire again when it resumes (SDM 18.3.1.1).
        Code code = (Code)op.Code;
        if ((op.Flags & (OpFlags.Rep | OpFlags.RepNe)) != 0 && Rip == rip)
        {
            FlagsOther |= RFlags.RF;
        }
        else if ((flagsBefore & RFlags.RF) != 0 && code is not (Code.Iretd or Code.Iretq))
        {
            FlagsOther &= ~RFlags.RF;
        }

        ulong traps = _breakpointHits;
        // Single step (SDM 18.3.1.4): decided by TF as the instruction began, so there is no trap
        // after the instruction that sets TF and there is one after the one that clears it. INT n,
        // INT3, INTO and INT1 clear TF on entering the handler and produce no single-step trap.
        // SYSCALL checks TF after it completes (a kernel's SFMASK including TF prevents a #DB at its
        // entry point); SYSRET does too, through SingleStepTrapAfterSysret.
        bool tf = code is Code.Syscall
            ? (FlagsOther & RFlags.TF) != 0
            : (flagsBefore & RFlags.TF) != 0 && !_noSingleStepTrap;
        if (tf)
        {
            traps |= Dr6BS;
        }
        if (_interruptShadow && IsMovOrPopSs(ref op))
        {
            // MOV SS / POP SS hold debug traps until after the next instruction (SDM Vol. 3A 6.8.3).
            _heldDebugTraps |= traps;
        }
        else
        {
            traps |= _heldDebugTraps;
            _heldDebugTraps = 0;
            if (traps != 0)
            {
                DeliverDebugTrap(traps);
            }
        }
        UpdateDebugActive();
        return retired;
    }

    static bool IsMovOrPopSs(ref Op op) =>
        op.Sub == (byte)Seg.SS && (Code)op.Code is Code.Mov_Sreg_rm16 or Code.Mov_Sreg_r32m16 or Code.Mov_Sreg_r64m16 or Code.Popw_SS or Code.Popd_SS;

    /// <summary>
    /// Delivers a trap-class #DB after the instruction completed (RIP already at the next one): DR6
    /// gets the new B0-B3 (replacing the old ones) and BS; BD/BS/BT already set stay, as the
    /// processor never clears them (SDM 18.2.3).
    /// </summary>
    void DeliverDebugTrap(ulong status)
    {
        Dr[6] = (Dr[6] & ~Dr6B0to3) | status | Dr6Fixed;
        _interruptShadow = false; // the event ends the STI shadow
        if (!DeliverException(Vector.DB, false, 0))
        {
            throw new CpuStopException(ShutdownReason ?? "triple fault");
        }
    }

    /// <summary>
    /// MOV to/from DRn with DR7.GD set: #DB fault with DR6.BD (SDM 18.2.4, 18.3.1.3). Checked
    /// before the DR4/DR5 #UD rule, after the CPL check.
    /// </summary>
    public void CheckGeneralDetect()
    {
        if ((Dr[7] & Dr7GD) != 0)
        {
            Dr[6] = (Dr[6] & ~Dr6B0to3) | Dr6BD;
            throw Fault(Vector.DB);
        }
    }

    /// <summary>INT1 / ICEBP (F1): a trap-class #DB without DPL check that leaves DR6 alone (SDM Vol. 2A INT1).</summary>
    public void Icebp()
    {
        Rip = NextRip; // trap: the frame holds the next instruction
        _noSingleStepTrap = true;
        if (!DeliverEvent(Vector.DB, EventKind.Exception, false, 0))
        {
            throw new CpuStopException(ShutdownReason ?? "triple fault");
        }
        ExitBlock = true;
    }

    /// <summary>
    /// SYSRET loading TF = 1 traps before the next instruction even when TF was clear as it began
    /// (QEMU checks TF after SYSRET too; Linux returns with IRET rather than SYSRET when TF is set
    /// because "restoring TF results in a trap from userspace immediately after SYSRET",
    /// arch/x86/entry/common.c). Called by SYSRET after it completed, on either run path.
    /// </summary>
    public void SingleStepTrapAfterSysret()
    {
        if ((FlagsOther & RFlags.TF) == 0)
        {
            return;
        }
        Rip = NextRip;
        _noSingleStepTrap = true; // the debug step must not add a second trap
        DeliverDebugTrap(Dr6BS | _heldDebugTraps);
        _heldDebugTraps = 0;
        NextRip = Rip;
        ExitBlock = true;
    }

    /// <summary>Faults push RF = 1 so the return does not re-trigger an instruction breakpoint (SDM 18.3.1.1); #DB itself does not.</summary>
    static bool IsFaultClass(byte vector) =>
        vector is Vector.DE or Vector.BR or Vector.UD or Vector.NM or Vector.TS or Vector.NP or Vector.SS or Vector.GP or Vector.PF or Vector.MF or Vector.AC or Vector.XM;
}
