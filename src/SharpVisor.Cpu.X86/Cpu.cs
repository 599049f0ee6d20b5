using System.Runtime.CompilerServices;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Fpu;
using SharpVisor.Cpu.X86.Model;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// One virtual x86-64 processor executed by the interpreter. State lives in public fields so that
/// instruction handlers (static methods in Semantics/) reach it without indirection; everything
/// that must stay consistent with it (mode, TLB, segment bases) changes only through the methods
/// of this partial class (the Cpu.*.cs files).
/// </summary>
public sealed unsafe partial class Cpu : IVcpuSignals
{
    public RegisterFile Regs;
    /// <summary>Offset within CS of the instruction being executed (committed after it completes).</summary>
    public ulong Rip;
    /// <summary>RFLAGS bits other than the six arithmetic ones (bit 1 always set).</summary>
    public ulong FlagsOther = RFlags.Reserved1;

    public SegmentRegister[] Segs = new SegmentRegister[6];
    public SegmentRegister Ldtr, Tr;
    public ulong GdtBase, IdtBase;
    public ushort GdtLimit, IdtLimit;

    public ulong Cr0Value = X86.Cr0.ET | X86.Cr0.CD | X86.Cr0.NW, Cr2, Cr3, Cr4Value, EferValue, Xcr0 = 1;
    public ulong[] Dr = new ulong[8];

    /// <summary>Current privilege level (CS.RPL, or SS.DPL in the rare cases they differ).</summary>
    public int Cpl;
    public CpuMode Mode;
    /// <summary>16, 32 or 64: the default operand/address size the decoder uses.</summary>
    public int CodeBits = 16;

    public readonly int Index;
    public readonly CpuPlatform Platform;
    public readonly GuestMemory Ram;
    public IVcpuApic? Apic;
    /// <summary>This vCPU's time-stamp counter (RDTSC, WRMSR IA32_TSC); its local APIC shares it for TSC-deadline.</summary>
    public readonly TimeStampCounter Tsc;
    public readonly Msrs Msr = new();
    public readonly FpuState Fpu = new();
    readonly GuestFault _fault = new();

    /// <summary>The VM's lock for LOCKed operations that cannot be done with one host atomic (<see cref="CpuPlatform.SplitLock"/>).</summary>
    public Lock SplitLock => Platform.SplitLock;

    /// <summary>The log of the VM this vCPU belongs to.</summary>
    public Log Log => Platform.Log;

    /// <summary>Mask of the stack pointer for implicit stack accesses: SP, ESP or RSP (SS.B, 64-bit mode).</summary>
    public ulong StackMask = 0xFFFF;

    public Cpu(int index, CpuPlatform platform)
    {
        Index = index;
        Platform = platform;
        _translator = platform.Translator;
        Ram = platform.Memory.Ram;
        CodePages = Ram.CodePageMap;
        Tsc = new TimeStampCounter(platform.Clock, platform.TscHz);
        Counters = new CpuCounters(index);
        InitTlb();
        Reset();
    }

    public CpuCounters Counters { get; }

    /// <summary>The VM's second tier, or null when this vCPU only interprets (<c>--cpu interp</c>).</summary>
    readonly Translation.Translator? _translator;

    /// <summary>Power-on / RESET state (SDM Vol. 3A 9.1.1, Table 9-1).</summary>
    public void Reset() => Reset(init: false);

    /// <summary>
    /// The state after RESET, or after INIT when <paramref name="init"/>: INIT is RESET except that
    /// the x87/SSE state (Table 9-1 and its footnote) — and, in Msrs, the TSC adjustment and the
    /// machine-check registers — stay unchanged.
    /// </summary>
    void Reset(bool init)
    {
        for (int i = 0; i < 16; i++)
        {
            Regs.Gpr[i] = 0;
        }
        Regs.Gpr[2] = 0x600; // RDX: processor signature family 6
        SetFlags(RFlags.Reserved1);
        Rip = 0xFFF0;
        for (int i = 0; i < 6; i++)
        {
            Segs[i] = new SegmentRegister { Selector = 0, Base = 0, Limit = 0xFFFF, Attributes = 0x93 };
        }
        Segs[(int)Seg.CS] = new SegmentRegister { Selector = 0xF000, Base = 0xFFFF_0000, Limit = 0xFFFF, Attributes = 0x9B };
        Ldtr = new SegmentRegister { Limit = 0xFFFF, Attributes = 0x82 };
        Tr = new SegmentRegister { Limit = 0xFFFF, Attributes = 0x8B };
        GdtBase = IdtBase = 0;
        GdtLimit = IdtLimit = 0xFFFF;
        Cr0Value = X86.Cr0.ET | X86.Cr0.CD | X86.Cr0.NW;
        Cr2 = Cr3 = Cr4Value = EferValue = 0;
        Xcr0 = 1;
        Array.Clear(Dr);
        Dr[6] = Dr6Fixed;
        Dr[7] = 0x400;
        _heldDebugTraps = 0;
        UpdateDebugState();
        Msr.Reset();
        if (!init)
        {
            Fpu.Reset();
        }
        Halted = false;
        _interruptShadow = false;
        NmiBlocked = false;
        UpdateMode();
    }

    // ---------------------------------------------------------------- registers

    /// <summary>Reads an 8-bit register operand: 0..15 low bytes, 20..23 AH..BH.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte GetReg8(int r) => r < RegisterFile.HighByteBase ? (byte)Regs.Gpr[r] : (byte)(Regs.Gpr[r - RegisterFile.HighByteBase] >> 8);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void SetReg8(int r, byte v)
    {
        if (r < RegisterFile.HighByteBase)
        {
            Regs.Gpr[r] = (Regs.Gpr[r] & ~0xFFUL) | v;
        }
        else
        {
            ref ulong g = ref Regs.Gpr[r - RegisterFile.HighByteBase];
            g = (g & ~0xFF00UL) | ((ulong)v << 8);
        }
    }

    public ulong Rax { get => Regs.Gpr[0]; set => Regs.Gpr[0] = value; }
    public ulong Rcx { get => Regs.Gpr[1]; set => Regs.Gpr[1] = value; }
    public ulong Rdx { get => Regs.Gpr[2]; set => Regs.Gpr[2] = value; }
    public ulong Rbx { get => Regs.Gpr[3]; set => Regs.Gpr[3] = value; }
    public ulong Rsp { get => Regs.Gpr[4]; set => Regs.Gpr[4] = value; }
    public ulong Rbp { get => Regs.Gpr[5]; set => Regs.Gpr[5] = value; }
    public ulong Rsi { get => Regs.Gpr[6]; set => Regs.Gpr[6] = value; }
    public ulong Rdi { get => Regs.Gpr[7]; set => Regs.Gpr[7] = value; }

    /// <summary>The RIP of the instruction after the current one (branches overwrite it).</summary>
    public ref ulong NextRip => ref Regs.Gpr[RegisterFile.NextRip];

    // ---------------------------------------------------------------- faults

    /// <summary>Raises a guest exception without error code; use as <c>throw c.Fault(Vector.UD)</c>.</summary>
    public GuestFault Fault(byte vector) => _fault.Set(vector, 0, false);

    /// <summary>Raises a guest exception with an error code (#GP, #PF, #TS, #NP, #SS, #AC, #DF).</summary>
    public GuestFault Fault(byte vector, uint errorCode) => _fault.Set(vector, errorCode, true);

    public GuestFault GeneralProtection(uint errorCode = 0) => _fault.Set(Vector.GP, errorCode, true);

    public GuestFault InvalidOpcode() => _fault.Set(Vector.UD, 0, false);

    // ---------------------------------------------------------------- mode

    public bool LongModeActive => (EferValue & Efer.LMA) != 0;
    public bool Paging => (Cr0Value & X86.Cr0.PG) != 0;
    public bool ProtectedMode => (Cr0Value & X86.Cr0.PE) != 0;

    /// <summary>
    /// The operating mode CR0.PE, RFLAGS.VM, EFER.LMA and CS.L select (SDM Vol. 3A 2.2, 10.8.5);
    /// <paramref name="csAttributes"/> packed as <see cref="SegmentRegister.Attributes"/>.
    /// </summary>
    public static CpuMode ModeOf(ulong cr0, ulong efer, ulong rflags, ushort csAttributes)
    {
        if ((cr0 & X86.Cr0.PE) == 0)
        {
            return CpuMode.Real;
        }
        if ((rflags & RFlags.VM) != 0)
        {
            return CpuMode.Virtual8086;
        }
        if ((efer & Efer.LMA) == 0)
        {
            return CpuMode.Protected;
        }
        return (csAttributes & 0x2000) != 0 ? CpuMode.Long64 : CpuMode.Compatibility;
    }

    /// <summary>
    /// Recomputes everything derived from CR0, EFER, CS and RFLAGS.VM: the mode, default code size,
    /// the effective segment bases and the linear-address mask. Call after any of them changes.
    /// </summary>
    public void UpdateMode()
    {
        ref SegmentRegister cs = ref Segs[(int)Seg.CS];
        var previous = Mode;
        Mode = ModeOf(Cr0Value, EferValue, FlagsOther, cs.Attributes);
        if (Mode == CpuMode.Real)
        {
            Cpl = 0;
        }
        else if (Mode == CpuMode.Virtual8086)
        {
            Cpl = 3;
        }
        else
        {
            // CPL is CS.RPL once CS is loaded in protected mode. Right after MOV CR0.PE=1 the old
            // real-mode selector is still in CS (its low bits mean nothing) and the CPL is the
            // DPL of the hidden CS state — 0 after real mode — until a far jump (SDM 9.9.1).
            Cpl = previous == CpuMode.Real ? cs.Dpl : cs.Selector & 3;
        }
        UpdateDerivedState();
    }

    /// <summary>
    /// Recomputes what follows from the mode, the CPL and the segment registers: the default code
    /// size, the effective segment bases, the linear-address and stack masks, the segment checks
    /// and the TLBs in use.
    /// </summary>
    void UpdateDerivedState()
    {
        CodeBits = Mode switch
        {
            CpuMode.Long64 => 64,
            CpuMode.Protected or CpuMode.Compatibility => Segs[(int)Seg.CS].Big ? 32 : 16,
            _ => 16,
        };
        bool flat64 = Mode == CpuMode.Long64;
        for (int i = 0; i < 6; i++)
        {
            Regs.SegBase[i] = flat64 && i < (int)Seg.FS ? 0 : Segs[i].Base;
        }
        Regs.SegBase[(int)Seg.None] = 0;
        Regs.LinearMask = LongModeActive ? ulong.MaxValue : 0xFFFF_FFFF;
        StackMask = Mode == CpuMode.Long64 ? ulong.MaxValue : Segs[(int)Seg.SS].Big ? 0xFFFF_FFFF : 0xFFFF;
        UpdateSegmentChecks();
        SelectTlb();
    }

    /// <summary>Stack pointer width in bytes for implicit stack operations (SS.B outside 64-bit mode).</summary>
    public int StackAddrSize => Mode == CpuMode.Long64 ? 8 : Segs[(int)Seg.SS].Big ? 4 : 2;

    public override string ToString() =>
        $"cpu{Index} {Mode} cpl{Cpl} rip={Segs[1].Selector:x4}:{Rip:x16} rax={Rax:x} rbx={Rbx:x} rcx={Rcx:x} rdx={Rdx:x} rsi={Rsi:x} rdi={Rdi:x} rbp={Rbp:x} rsp={Rsp:x} rflags={GetFlags():x} cr0={Cr0Value:x} cr3={Cr3:x} cr4={Cr4Value:x} efer={EferValue:x}";
}

/// <summary>Per-vCPU counters a user can print at exit.</summary>
public sealed class CpuCounters(int index)
{
    public readonly Counter Instructions = new($"cpu{index}.instructions");
    public readonly Counter BlocksDecoded = new($"cpu{index}.blocks_decoded");
    public readonly Counter BlockCacheMisses = new($"cpu{index}.block_cache_misses");
    /// <summary>Decodes of instructions that straddle a page boundary (cached while both pages stay the same).</summary>
    public readonly Counter StraddlingDecodes = new($"cpu{index}.straddling_decodes");
    public readonly Counter CodeInvalidations = new($"cpu{index}.code_invalidations");
    public readonly Counter TlbMisses = new($"cpu{index}.tlb_misses");
    public readonly Counter PageFaults = new($"cpu{index}.page_faults");
    public readonly Counter Exceptions = new($"cpu{index}.exceptions");
    public readonly Counter Interrupts = new($"cpu{index}.interrupts");
    public readonly Counter Unimplemented = new($"cpu{index}.unimplemented_instructions");
    /// <summary>RDMSR/WRMSR of an MSR this CPU does not have (#GP; Linux probes some on purpose).</summary>
    public readonly Counter UnknownMsrAccesses = new($"cpu{index}.unknown_msr_accesses");
    /// <summary>WRMSR of an existing MSR refused with #GP (reserved bits, non-canonical, read-only).</summary>
    public readonly Counter RefusedMsrWrites = new($"cpu{index}.refused_msr_writes");
    /// <summary>MOV to CR0/CR3/CR4/CR8/DR6/DR7 refused with #GP.</summary>
    public readonly Counter CrWriteFaults = new($"cpu{index}.cr_write_faults");
    /// <summary>IN/OUT/INS/OUTS refused with #GP by IOPL and the TSS I/O permission bitmap.</summary>
    public readonly Counter IoPermissionFaults = new($"cpu{index}.io_permission_faults");

    /// <summary>Hardware task switches (SDM Vol. 3A 7.3), and those that faulted after their commit point.</summary>
    public readonly Counter TaskSwitches = new($"cpu{index}.task_switches");
    public readonly Counter TaskSwitchFaultsAfterCommit = new($"cpu{index}.task_switch_faults_after_commit");

    /// <summary>Instruction fetches from outside RAM (MMIO or unclaimed addresses), answered with #UD.</summary>
    public readonly Counter FetchesOutsideRam = new($"cpu{index}.fetches_outside_ram");

    /// <summary>Blocks run as translated code rather than interpreted.</summary>
    public readonly Counter TranslatedBlockRuns = new($"cpu{index}.translated_block_runs");
    /// <summary>Instructions retired by translated code; with <see cref="Instructions"/> this gives the share of the work translated.</summary>
    public readonly Counter TranslatedInstructions = new($"cpu{index}.translated_instructions");
    /// <summary>Blocks run by the interpreter (not yet hot, not translatable, or in an interrupt shadow).</summary>
    public readonly Counter InterpretedBlockRuns = new($"cpu{index}.interpreted_block_runs");
    /// <summary>Block transitions the run loop resolved through the block cache rather than a remembered successor.</summary>
    public readonly Counter BlockLookups = new($"cpu{index}.block_lookups");
    /// <summary>Transitions from one translation to the next without the run loop (<c>Cpu.ChainFrom</c>).</summary>
    public readonly Counter ChainedTransitions = new($"cpu{index}.chained_transitions");

    public IEnumerable<Counter> All => [Instructions, BlocksDecoded, BlockCacheMisses, StraddlingDecodes, CodeInvalidations, TlbMisses, PageFaults, Exceptions, Interrupts, Unimplemented,
        UnknownMsrAccesses, RefusedMsrWrites, CrWriteFaults, IoPermissionFaults, TaskSwitches, TaskSwitchFaultsAfterCommit, FetchesOutsideRam, TranslatedBlockRuns,
        TranslatedInstructions, InterpretedBlockRuns, BlockLookups, ChainedTransitions];
}
