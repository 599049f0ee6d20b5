using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86;

/// <summary>Kinds of memory access, for permission checks and #PF error codes (SDM Vol. 3A 4.6, 4.7).</summary>
public enum Access : byte { Read = 0, Write = 1, Execute = 2 }

/// <summary>
/// Linear-memory access for the interpreter: a direct-mapped software TLB per privilege class on the
/// fast path, the page walker (Cpu.PageWalker.cs) and the physical bus on the slow path.
/// </summary>
public sealed unsafe partial class Cpu
{
    public const int TlbBits = 10;
    public const int TlbSize = 1 << TlbBits;
    const ulong PageMask = ~0xFFFUL;

    TlbEntry[] _tlbSupervisor = null!, _tlbUser = null!;
    /// <summary>The TLB for data accesses at the current privilege (user when CPL = 3), or one that
    /// never hits while alignment checks are active (Cpu.AlignmentChecks.cs).</summary>
    TlbEntry[] _tlb = null!;
    /// <summary>The TLB for instruction fetch at the current privilege.</summary>
    TlbEntry[] _codeTlb = null!;
    bool _tlbHasLargePages;
    /// <summary>
    /// Changes whenever a code translation may have: TLB flushes, INVLPG, another TLB or code size in
    /// use. Remembered block successors (<see cref="BlockLink"/>, translations' chain cells) hold only
    /// while it is unchanged. Each code TLB has an epoch of its own (<see cref="_userCodeEpoch"/>,
    /// <see cref="_supervisorCodeEpoch"/>, never equal: one is odd, the other even) and this is the
    /// current TLB's: a system call or an interrupt switches between them without invalidating the
    /// successors remembered under either. (A single epoch bumped at every CPL change made every
    /// system call, interrupt and return re-link all of user space's and the kernel's hot blocks:
    /// 77 million block lookups in the 8-workload suite, half of the run loop's dispatches.)
    /// </summary>
    long _codeMapEpoch;
    long _userCodeEpoch = 1, _supervisorCodeEpoch = 2;
    /// <summary>The code size the epochs were last valid for: blocks are decoded for one.</summary>
    int _epochCodeBits;

    /// <summary>Every remembered successor is stale: both TLBs' epochs move on.</summary>
    void NewCodeMapEpoch()
    {
        _userCodeEpoch += 2;
        _supervisorCodeEpoch += 2;
        _codeMapEpoch = _codeTlb == _tlbUser ? _userCodeEpoch : _supervisorCodeEpoch;
    }

    /// <summary>
    /// The first entry of <see cref="_tlb"/>, for translated code, which does the TLB lookup with
    /// pointer arithmetic (Translation/InlineForms.cs): the TLB arrays are allocated pinned, so the
    /// address stays valid. Set with <see cref="_tlb"/>.
    /// </summary>
    public TlbEntry* DataTlb;

    /// <summary>RAM's code-page map (<see cref="GuestMemory.CodePageMap"/>), for translated code's writes.</summary>
    public byte* CodePages;

    void InitTlb()
    {
        _tlbSupervisor = NewPinnedTlb();
        _tlbUser = NewPinnedTlb();
        FlushTlb(includeGlobal: true);
    }

    static TlbEntry[] NewPinnedTlb() => GC.AllocateArray<TlbEntry>(TlbSize, pinned: true);

    /// <summary>Picks the TLBs for the current privilege; call when the CPL, CR0.AM or EFLAGS.AC change.</summary>
    void SelectTlb()
    {
        _codeTlb = Cpl == 3 ? _tlbUser : _tlbSupervisor;
        if (CodeBits != _epochCodeBits)
        {
            _epochCodeBits = CodeBits;
            NewCodeMapEpoch(); // successors were found decoding for another code size
        }
        _codeMapEpoch = _codeTlb == _tlbUser ? _userCodeEpoch : _supervisorCodeEpoch;
        _alignmentChecks = AlignmentCheckConditions;
        _tlb = _alignmentChecks ? s_alignmentCheckedTlb : _codeTlb;
        DataTlb = (TlbEntry*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_tlb));
    }

    /// <summary>Drops cached translations: all of them, or all but global ones (MOV CR3, SDM 4.10.4.1).</summary>
    public void FlushTlb(bool includeGlobal)
    {
        NewCodeMapEpoch();
        FlushTlbArray(_tlbSupervisor, includeGlobal);
        FlushTlbArray(_tlbUser, includeGlobal);
        if (includeGlobal)
        {
            _tlbHasLargePages = false;
        }
    }

    static void FlushTlbArray(TlbEntry[] tlb, bool includeGlobal)
    {
        for (int i = 0; i < tlb.Length; i++)
        {
            ref TlbEntry e = ref tlb[i];
            if (includeGlobal || !e.Global)
            {
                e = new TlbEntry { ReadTag = TlbEntry.Invalid, WriteTag = TlbEntry.Invalid, ExecTag = TlbEntry.Invalid };
            }
        }
    }

    /// <summary>INVLPG: drops the translation of one page. Entries filled from a large page cover many
    /// 4 KiB slots, so when any exist the whole TLB is flushed (always permitted: SDM 4.10.4.1).</summary>
    public void InvalidatePage(ulong linear)
    {
        NewCodeMapEpoch();
        if (_tlbHasLargePages)
        {
            FlushTlb(includeGlobal: true);
            return;
        }
        ulong page = linear & PageMask;
        int i = (int)((linear >> 12) & (TlbSize - 1));
        foreach (var tlb in (ReadOnlySpan<TlbEntry[]>)[_tlbSupervisor, _tlbUser])
        {
            ref TlbEntry e = ref tlb[i];
            if (e.ReadTag == page || e.WriteTag == page || e.ExecTag == page)
            {
                e = new TlbEntry { ReadTag = TlbEntry.Invalid, WriteTag = TlbEntry.Invalid, ExecTag = TlbEntry.Invalid };
            }
        }
    }

    // ------------------------------------------------------------- data reads

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public byte Read8(ulong la)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        return e.ReadTag == (la & PageMask) ? *(byte*)(e.HostAddend + (long)la) : (byte)ReadSlow(la, 1, 0);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ushort Read16(ulong la)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        return e.ReadTag == (la & PageMask) && (la & 0xFFF) <= 0xFFE ? *(ushort*)(e.HostAddend + (long)la) : (ushort)ReadSlow(la, 2, 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public uint Read32(ulong la)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        return e.ReadTag == (la & PageMask) && (la & 0xFFF) <= 0xFFC ? *(uint*)(e.HostAddend + (long)la) : (uint)ReadSlow(la, 4, 3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Read64(ulong la)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        return e.ReadTag == (la & PageMask) && (la & 0xFFF) <= 0xFF8 ? *(ulong*)(e.HostAddend + (long)la) : ReadSlow(la, 8, 7);
    }

    // ------------------------------------------------------------- data writes

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write8(ulong la, byte v)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        if (e.WriteTag == (la & PageMask) && !Ram.IsCodePage(e.RamOffset)) { *(byte*)(e.HostAddend + (long)la) = v; return; }
        WriteSlow(la, 1, 0, v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write16(ulong la, ushort v)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        if (e.WriteTag == (la & PageMask) && (la & 0xFFF) <= 0xFFE && !Ram.IsCodePage(e.RamOffset)) { *(ushort*)(e.HostAddend + (long)la) = v; return; }
        WriteSlow(la, 2, 1, v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write32(ulong la, uint v)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        if (e.WriteTag == (la & PageMask) && (la & 0xFFF) <= 0xFFC && !Ram.IsCodePage(e.RamOffset)) { *(uint*)(e.HostAddend + (long)la) = v; return; }
        WriteSlow(la, 4, 3, v);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write64(ulong la, ulong v)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        if (e.WriteTag == (la & PageMask) && (la & 0xFFF) <= 0xFF8 && !Ram.IsCodePage(e.RamOffset)) { *(ulong*)(e.HostAddend + (long)la) = v; return; }
        WriteSlow(la, 8, 7, v);
    }

    // ------------------------------------------------------------- accesses alignment checking exempts

    /// <summary>
    /// A quadword read that is never alignment checked: half of a MOVUPS/MOVUPD/MOVDQU operand, or
    /// part of an operand checked as a whole with <see cref="CheckAlignment"/> (Cpu.AlignmentChecks.cs).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Read64NoAlignmentCheck(ulong la)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        return e.ReadTag == (la & PageMask) && (la & 0xFFF) <= 0xFF8 ? *(ulong*)(e.HostAddend + (long)la) : ReadSlow(la, 8, 0);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Write64NoAlignmentCheck(ulong la, ulong v)
    {
        ref TlbEntry e = ref _tlb[(int)(la >> 12) & (TlbSize - 1)];
        if (e.WriteTag == (la & PageMask) && (la & 0xFFF) <= 0xFF8 && !Ram.IsCodePage(e.RamOffset)) { *(ulong*)(e.HostAddend + (long)la) = v; return; }
        WriteSlow(la, 8, 0, v);
    }

    /// <summary>A doubleword write that is never alignment checked (the base of SGDT/SIDT's 32-bit image); always the slow path.</summary>
    public void Write32NoAlignmentCheck(ulong la, uint v) => WriteSlow(la, 4, 0, v);

    /// <summary>Reads <paramref name="size"/> bytes (1, 2, 4, 8) little-endian.</summary>
    public ulong ReadSized(ulong la, int size) => size switch { 1 => Read8(la), 2 => Read16(la), 4 => Read32(la), _ => Read64(la) };

    public void WriteSized(ulong la, int size, ulong v)
    {
        switch (size)
        {
            case 1: Write8(la, (byte)v); break;
            case 2: Write16(la, (ushort)v); break;
            case 4: Write32(la, (uint)v); break;
            default: Write64(la, v); break;
        }
    }

    /// <summary>
    /// Host pointer for a read-modify-write of <paramref name="size"/> bytes at <paramref name="la"/>
    /// (LOCKed instructions, XCHG), or null when the location is MMIO or straddles a page; checks
    /// alignment (#AC) and write permission (#PF), and drops cached code in the page.
    /// </summary>
    public byte* WritablePointer(ulong la, int size)
    {
        CheckAlignment(la, size);
        if ((la & 0xFFF) > (ulong)(0x1000 - size))
        {
            return null;
        }
        ulong pa = Translate(la, Access.Write, Cpl == 3);
        long off = Ram.HostOffset(pa);
        if (off < 0 || !Ram.IsRamRange(pa, (ulong)size))
        {
            return null;
        }
        if (_dataBreakpoints != 0)
        {
            NoteDataAccess(la & Regs.LinearMask, size, write: true); // a read-modify-write: matches R/W = 01 and 11
        }
        if (Ram.NoteWrite((ulong)off, (ulong)size))
        {
            OnCodeWritten();
        }
        return Ram.HostBase + off;
    }

    // ------------------------------------------------------------- slow paths

    /// <summary>
    /// A read the fast path could not serve: TLB miss, page-straddling, MMIO, watched by a data
    /// breakpoint, or alignment checks active — then <paramref name="alignmentMask"/> (size - 1, 0 for
    /// an exempt access) decides #AC.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    ulong ReadSlow(ulong la, int size, ulong alignmentMask)
    {
        if (_alignmentChecks && TryReadAlignmentChecked(la, size, alignmentMask, out ulong hit))
        {
            return hit;
        }
        la &= Regs.LinearMask;
        if (_dataBreakpoints != 0)
        {
            NoteDataAccess(la, size, write: false);
        }
        if ((la & 0xFFF) > (ulong)(0x1000 - size))
        {
            // Crosses a page: both translations must succeed before any byte is used.
            CheckCrossingCanonical(la, size);
            ulong value = 0;
            for (int i = 0; i < size; i++)
            {
                value |= (ulong)ReadByteTranslated((la + (ulong)i) & Regs.LinearMask) << (8 * i);
            }
            return value;
        }
        ulong pa = TranslateAndFill(la, Access.Read);
        return PhysRead(pa, size);
    }

    byte ReadByteTranslated(ulong la) => (byte)PhysRead(TranslateAndFill(la, Access.Read), 1);

    [MethodImpl(MethodImplOptions.NoInlining)]
    void WriteSlow(ulong la, int size, ulong alignmentMask, ulong v)
    {
        if (_alignmentChecks && TryWriteAlignmentChecked(la, size, alignmentMask, v))
        {
            return;
        }
        la &= Regs.LinearMask;
        if (_dataBreakpoints != 0)
        {
            NoteDataAccess(la, size, write: true);
        }
        if ((la & 0xFFF) > (ulong)(0x1000 - size))
        {
            CheckCrossingCanonical(la, size);
            ulong second = ((la & PageMask) + 0x1000) & Regs.LinearMask;
            int firstLen = (int)(0x1000 - (la & 0xFFF));
            ulong pa1 = TranslateAndFill(la, Access.Write);
            ulong pa2 = TranslateAndFill(second, Access.Write); // faults before anything is written
            for (int i = 0; i < size; i++)
            {
                ulong pa = i < firstLen ? pa1 + (ulong)i : pa2 + (ulong)(i - firstLen);
                PhysWrite(pa, 1, v >> (8 * i));
            }
            return;
        }
        PhysWrite(TranslateAndFill(la, Access.Write), size, v);
    }

    /// <summary>Physical read through RAM, this vCPU's local APIC, or the MMIO bus.</summary>
    public ulong PhysRead(ulong pa, int size)
    {
        long off = Ram.HostOffset(pa);
        if (off >= 0)
        {
            byte* p = Ram.HostBase + off;
            return size switch { 1 => *p, 2 => *(ushort*)p, 4 => *(uint*)p, _ => *(ulong*)p };
        }
        if (Apic?.MmioBase is ulong apicBase && pa - apicBase < 0x1000)
        {
            return Apic.MmioRead(pa - apicBase, size);
        }
        return Platform.Memory.Read(pa, size);
    }

    public void PhysWrite(ulong pa, int size, ulong v)
    {
        long off = Ram.HostOffset(pa);
        if (off >= 0)
        {
            if (Ram.NoteWrite((ulong)off, (ulong)size))
            {
                OnCodeWritten();
            }
            byte* p = Ram.HostBase + off;
            switch (size)
            {
                case 1: *p = (byte)v; break;
                case 2: *(ushort*)p = (ushort)v; break;
                case 4: *(uint*)p = (uint)v; break;
                default: *(ulong*)p = v; break;
            }
            return;
        }
        if (Apic?.MmioBase is ulong apicBase && pa - apicBase < 0x1000)
        {
            Apic.MmioWrite(pa - apicBase, size, v);
            RecheckInterrupts(); // an EOI or a lower TPR may let a pending interrupt through
            return;
        }
        Platform.Memory.Write(pa, size, v);
    }

    /// <summary>
    /// Translates a linear address for an access at the current privilege and installs the TLB
    /// entry for its page (only the access kinds the translation allows take the fast path later).
    /// </summary>
    ulong TranslateAndFill(ulong la, Access access)
    {
        Counters.TlbMisses.IncrementUnsynchronized();
        bool user = Cpl == 3;
        var w = Walk(la, access, user, implicitSupervisor: false);
        if (w.Fault != 0)
        {
            throw PageFault(la, w.Fault);
        }
        Fill(user ? _tlbUser : _tlbSupervisor, la, w);
        return w.Physical;
    }

    /// <summary>Translates without filling the TLB (system accesses, LOCKed pointers). Throws #PF.</summary>
    public ulong Translate(ulong la, Access access, bool user, bool implicitSupervisor = false)
    {
        var w = Walk(la & Regs.LinearMask, access, user, implicitSupervisor);
        if (w.Fault != 0)
        {
            throw PageFault(la, w.Fault);
        }
        return w.Physical;
    }

    void Fill(TlbEntry[] tlb, ulong la, in WalkResult w)
    {
        ulong page = la & PageMask;
        ulong paPage = w.Physical & PageMask;
        long off = Ram.HostOffset(paPage);
        ref TlbEntry e = ref tlb[(int)(la >> 12) & (TlbSize - 1)];
        if (off < 0)
        {
            // MMIO (or nothing): every access goes through the slow path to the device.
            e = new TlbEntry { ReadTag = TlbEntry.Invalid, WriteTag = TlbEntry.Invalid, ExecTag = TlbEntry.Invalid };
            return;
        }
        if (w.LargePage)
        {
            _tlbHasLargePages = true;
        }
        e.RamOffset = (ulong)off;
        e.HostAddend = (long)(Ram.HostBase + off) - (long)page;
        e.Global = w.Global;
        e.ReadTag = w.AllowRead ? page : TlbEntry.Invalid;
        e.WriteTag = w.AllowWrite ? page : TlbEntry.Invalid;
        e.ExecTag = w.AllowExecute ? page : TlbEntry.Invalid;
        if (_dataBreakpoints != 0)
        {
            DataBreakpointTags(page, ref e); // a watched page's data accesses take the slow path, which checks them
        }
    }

    GuestFault PageFault(ulong la, uint walkFault)
    {
        Cr2 = la;
        Counters.PageFaults.IncrementUnsynchronized();
        return Fault(Vector.PF, walkFault & ~FaultMarker);
    }

    // ------------------------------------------------------------- system (implicit supervisor) accesses

    /// <summary>Reads for descriptor tables, the TSS and the IDT: supervisor accesses whatever the CPL (SDM 4.6.1).</summary>
    public ulong SystemRead(ulong la, int size)
    {
        la &= Regs.LinearMask;
        ulong value = 0;
        for (int i = 0; i < size;)
        {
            ulong a = (la + (ulong)i) & Regs.LinearMask;
            int chunk = (int)Math.Min((ulong)(size - i), 0x1000 - (a & 0xFFF));
            ulong pa = Translate(a, Access.Read, user: false, implicitSupervisor: true);
            for (int j = 0; j < chunk; j++)
            {
                value |= PhysRead(pa + (ulong)j, 1) << (8 * (i + j));
            }
            i += chunk;
        }
        return value;
    }

    public void SystemWrite(ulong la, int size, ulong v)
    {
        la &= Regs.LinearMask;
        // Translate every page first so a fault leaves memory untouched.
        ulong pa1 = Translate(la, Access.Write, user: false, implicitSupervisor: true);
        ulong end = (la + (ulong)size - 1) & Regs.LinearMask;
        ulong pa2 = (end & PageMask) != (la & PageMask) ? Translate(end, Access.Write, false, true) : 0;
        int firstLen = (int)Math.Min((ulong)size, 0x1000 - (la & 0xFFF));
        for (int i = 0; i < size; i++)
        {
            ulong pa = i < firstLen ? pa1 + (ulong)i : (pa2 & PageMask) + (ulong)(i - firstLen);
            PhysWrite(pa, 1, v >> (8 * i));
        }
    }
}
