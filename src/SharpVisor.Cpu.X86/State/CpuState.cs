namespace SharpVisor.Cpu.X86.State;

/// <summary>
/// The complete architectural state of one vCPU as one plain value: what KVM splits into
/// kvm_regs, kvm_sregs, kvm_fpu, kvm_debugregs, kvm_vcpu_events and its MSR list, and what the
/// guest-state area of a VMCS holds (SDM Vol. 3C 25.4). Taken with <see cref="Cpu.SaveState"/> and
/// put back with <see cref="Cpu.RestoreState"/>, which validates it first (<see cref="CpuStateChecks"/>).
/// </summary>
/// <remarks>
/// <para>Nothing derived or cached is here: the mode, default code size, effective segment bases,
/// stack mask, segment-check flags, breakpoint masks, TLBs and decoded blocks are recomputed or
/// dropped when a state is restored.</para>
/// <para>Left out on purpose: CR8, which is the local APIC's TPR (SDM Vol. 3A 11.8.6) and so belongs to
/// the APIC's state — only a vCPU without an APIC keeps it, in <see cref="MsrState.TprWithoutApic"/>;
/// pending maskable interrupts, which wait in the APIC's IRR, not in the CPU; and YMM/AVX state,
/// because this CPU has no AVX (XCR0 can only be 1). A later version adds them if that changes.</para>
/// <para>Arrays are copied in and out by <see cref="Cpu.SaveState"/> and <see cref="Cpu.RestoreState"/>,
/// so a state never aliases a live vCPU; treat one as immutable (build variants with <c>with</c> and
/// new arrays). Equality compares arrays element by element (<see cref="StateEquality"/>).</para>
/// </remarks>
public sealed record CpuState
{
    /// <summary>The layout this build writes and reads.</summary>
    public const int CurrentVersion = 1;

    public int Version { get; init; } = CurrentVersion;

    // ---- general registers (SDM Vol. 1 3.4) ----

    /// <summary>RAX..R15 in encoding order: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.</summary>
    public required ulong[] Gpr { get; init; }
    public required ulong Rip { get; init; }
    /// <summary>The whole RFLAGS register, the arithmetic flags included (materialised from the lazy flags).</summary>
    public required ulong Rflags { get; init; }

    /// <summary>
    /// The current privilege level. Architecturally SS.DPL (SDM Vol. 3C 25.4.1 note); kept explicitly
    /// because right after MOV CR0.PE=1 the CPU runs at the hidden CS DPL with a real-mode selector
    /// still in CS (Cpu.UpdateMode), which the segment registers alone do not say.
    /// </summary>
    public required int Cpl { get; init; }

    // ---- segment registers and descriptor tables (SDM Vol. 3A 3.4.3, 2.4; Vol. 3C 25.4.1) ----

    public required SegmentState Es { get; init; }
    public required SegmentState Cs { get; init; }
    public required SegmentState Ss { get; init; }
    public required SegmentState Ds { get; init; }
    /// <summary>FS; its base is IA32_FS_BASE (SDM Vol. 3A 3.4.4).</summary>
    public required SegmentState Fs { get; init; }
    /// <summary>GS; its base is IA32_GS_BASE.</summary>
    public required SegmentState Gs { get; init; }
    public required SegmentState Ldtr { get; init; }
    public required SegmentState Tr { get; init; }
    public required DescriptorTableState Gdtr { get; init; }
    public required DescriptorTableState Idtr { get; init; }

    // ---- control registers (SDM Vol. 3A 2.5, 2.2.1; Vol. 1 13.3) ----

    public required ulong Cr0 { get; init; }
    /// <summary>The last page-fault linear address.</summary>
    public required ulong Cr2 { get; init; }
    public required ulong Cr3 { get; init; }
    public required ulong Cr4 { get; init; }
    public required ulong Xcr0 { get; init; }
    public required ulong Efer { get; init; }

    // ---- debug registers (SDM Vol. 3B 18.2) ----

    public required ulong Dr0 { get; init; }
    public required ulong Dr1 { get; init; }
    public required ulong Dr2 { get; init; }
    public required ulong Dr3 { get; init; }
    public required ulong Dr6 { get; init; }
    public required ulong Dr7 { get; init; }

    public required X87SseState Fpu { get; init; }
    public required MsrState Msrs { get; init; }
    public required EventState Events { get; init; }

    public bool Equals(CpuState? other) => StateEquality.PropertiesEqual(this, other);
    public override int GetHashCode() => StateEquality.PropertiesHash(this);
}

/// <summary>
/// A segment register: the visible selector and the hidden descriptor cache (SDM Vol. 3A 3.4.3).
/// <paramref name="Attributes"/> packs descriptor bits 40..55 as the VMCS access-rights field does
/// (SDM Vol. 3C 25.4.1, Table 25-2): type (3:0), S (4), DPL (6:5), P (7), AVL (12), L (13), D/B (14),
/// G (15); bits 11:8 are always 0. A segment with P = 0 is unusable (a null selector was loaded).
/// </summary>
/// <param name="Limit">Byte-granular limit (already scaled by G).</param>
public readonly record struct SegmentState(ushort Selector, ulong Base, uint Limit, ushort Attributes)
{
    public int Type => Attributes & 0xF;
    public bool IsSystem => (Attributes & 0x10) == 0;
    public int Dpl => (Attributes >> 5) & 3;
    public bool Present => (Attributes & 0x80) != 0;
    public bool Long => (Attributes & 0x2000) != 0;
    public bool Big => (Attributes & 0x4000) != 0;
    public bool Granular => (Attributes & 0x8000) != 0;
    public bool IsCode => !IsSystem && (Type & 8) != 0;

    public static SegmentState From(in SegmentRegister r) => new(r.Selector, r.Base, r.Limit, r.Attributes);

    public SegmentRegister ToRegister() => new() { Selector = Selector, Base = Base, Limit = Limit, Attributes = Attributes };
}

/// <summary>GDTR or IDTR: linear base and 16-bit limit (SDM Vol. 3A 2.4.1, 2.4.3).</summary>
public readonly record struct DescriptorTableState(ulong Base, ushort Limit);

/// <summary>
/// Whether the vCPU executes instructions (SDM Vol. 3C 25.4.2 "Activity state"): active, stopped by
/// HLT until an interrupt, NMI, INIT or reset, or an application processor waiting for a startup IPI.
/// </summary>
public enum ActivityState : byte { Active = 0, Halted = 1, WaitForSipi = 3 }

/// <summary>
/// Execution and event state between two instructions (SDM Vol. 3C 25.4.2, KVM's kvm_vcpu_events):
/// what decides, besides the registers, what the vCPU does next.
/// </summary>
public sealed record EventState
{
    public required ActivityState Activity { get; init; }
    /// <summary>
    /// The previous instruction was STI (setting IF), MOV SS or POP SS: interrupts, NMIs and debug
    /// traps wait until after the next instruction (SDM Vol. 3A 6.8.3; Vol. 2B STI). One flag serves
    /// both kinds, as in the interpreter; a MOV SS shadow may also hold <see cref="HeldDebugTraps"/>.
    /// </summary>
    public required bool InterruptShadow { get; init; }
    /// <summary>An NMI handler is running: further NMIs wait for the next IRET (SDM Vol. 3A 6.7.1).</summary>
    public required bool NmiBlocked { get; init; }
    /// <summary>An NMI was signalled and not yet taken.</summary>
    public required bool NmiPending { get; init; }
    /// <summary>An INIT was signalled and not yet taken.</summary>
    public required bool InitPending { get; init; }
    /// <summary>The vector of a startup IPI signalled and not yet taken.</summary>
    public required byte? PendingSipiVector { get; init; }
    /// <summary>DR6 B0-B3/BS bits of debug traps a MOV SS / POP SS holds until after the next instruction (SDM Vol. 3A 6.8.3).</summary>
    public required ulong HeldDebugTraps { get; init; }
}

/// <summary>One x87 data register R0..R7 as its 80 bits: the significand with its explicit integer bit, then sign and biased exponent.</summary>
public readonly record struct X87Register(ulong Significand, ushort SignExponent);

/// <summary>One 128-bit XMM register as two halves.</summary>
public readonly record struct XmmRegister(ulong Low, ulong High);

/// <summary>
/// The x87, MMX and SSE state (SDM Vol. 1 8.1, 9.2, 10.2) as FXSAVE lays it out (Vol. 1 10.5.1),
/// except that the tag word is the full one (2 bits per register): MMX sets every tag to valid
/// whatever the register holds, so the full tags cannot be recomputed from the registers.
/// </summary>
public sealed record X87SseState
{
    public required ushort Fcw { get; init; }
    /// <summary>FSW, TOP included (bits 13:11).</summary>
    public required ushort Fsw { get; init; }
    /// <summary>Full tag word: 2 bits per physical register (00 valid, 01 zero, 10 special, 11 empty).</summary>
    public required ushort Ftw { get; init; }
    /// <summary>Last x87 opcode (11 bits).</summary>
    public required ushort Fop { get; init; }
    public required ulong Fip { get; init; }
    public required ushort Fcs { get; init; }
    public required ulong Fdp { get; init; }
    public required ushort Fds { get; init; }
    /// <summary>R0..R7 in physical order (ST(i) is R[(TOP + i) mod 8]); MM0-MM7 are their significands.</summary>
    public required X87Register[] Registers { get; init; }
    /// <summary>XMM0..XMM15.</summary>
    public required XmmRegister[] Xmm { get; init; }
    public required uint Mxcsr { get; init; }

    public bool Equals(X87SseState? other) => StateEquality.PropertiesEqual(this, other);
    public override int GetHashCode() => StateEquality.PropertiesHash(this);
}

/// <summary>
/// The model-specific registers that hold state (SDM Vol. 4 chapter 2). EFER is in
/// <see cref="CpuState.Efer"/> and FS/GS base in the segment bases; constant MSRs (MTRRcap,
/// MCG_CAP, FEATURE_CONTROL...) and the APIC's (APIC_BASE, x2APIC, TSC_DEADLINE) are not here.
/// </summary>
public sealed record MsrState
{
    public required ulong SysenterCs { get; init; }
    public required ulong SysenterEsp { get; init; }
    public required ulong SysenterEip { get; init; }
    public required ulong Star { get; init; }
    public required ulong Lstar { get; init; }
    public required ulong Cstar { get; init; }
    public required ulong Sfmask { get; init; }
    public required ulong KernelGsBase { get; init; }
    public required ulong TscAux { get; init; }
    public required ulong Pat { get; init; }
    /// <summary>IA32_MISC_ENABLE's writable bits (fast strings, bit 0); the fixed ones are added on read.</summary>
    public required ulong MiscEnable { get; init; }
    public required ulong SpecCtrl { get; init; }
    public required ulong MtrrDefType { get; init; }
    /// <summary>IA32_MTRR_PHYSBASE0/PHYSMASK0 .. PHYSBASE7/PHYSMASK7 (MSRs 200H-20FH) in MSR order.</summary>
    public required ulong[] MtrrVariable { get; init; }
    /// <summary>The 11 fixed-range MTRRs: FIX64K_00000, FIX16K_80000, FIX16K_A0000, FIX4K_C0000..FIX4K_F8000.</summary>
    public required ulong[] MtrrFixed { get; init; }
    public required ulong McgStatus { get; init; }
    public required ulong McgCtl { get; init; }
    /// <summary>IA32_MCi_CTL, _STATUS, _ADDR, _MISC of bank i at 4i..4i+3 (MSR 400H + 4i + k).</summary>
    public required ulong[] McBanks { get; init; }
    /// <summary>IA32_TSC_ADJUST (SDM Vol. 3B 18.17.3).</summary>
    public required long TscAdjust { get; init; }
    /// <summary>
    /// IA32_TSC as its offset from the virtual clock: TSC = ticks of virtual time + offset. A value
    /// would be right only if the clock were restored first and stood still until the CPU is; the
    /// offset gives the same TSC at every virtual instant in a VM whose clock is restored to the same
    /// virtual time, whatever the order of restoring.
    /// </summary>
    public required long TscOffset { get; init; }
    /// <summary>CR8 of a vCPU without a local APIC (with one, the TPR is the APIC's state): TPR bits 7:4.</summary>
    public required uint TprWithoutApic { get; init; }

    public bool Equals(MsrState? other) => StateEquality.PropertiesEqual(this, other);
    public override int GetHashCode() => StateEquality.PropertiesHash(this);
}
