using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Semantics;

/// <summary>The per-element work of one string instruction.</summary>
public interface IStringOp
{
    /// <summary>One iteration: accesses memory/ports and moves RSI/RDI; updates the flags for CMPS/SCAS.</summary>
    static abstract void Step<S>(Cpu c, ref Op op) where S : IOpSize;
    /// <summary>CMPS and SCAS: REPE/REPNE also end on ZF.</summary>
    static abstract bool Compares { get; }
    /// <summary>Bulk path for REP over RAM (either direction): returns elements done (registers updated),
    /// 0 when this element cannot take it (straddles a page), -1 when the chunk is not plain RAM.</summary>
    static abstract long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize;
    /// <summary>Checks made before the count is looked at, so they fault even with a zero count.</summary>
    static virtual void CheckBeforeRepeat<S>(Cpu c) where S : IOpSize { }
}

/// <summary>
/// String instructions MOVS, CMPS, SCAS, LODS, STOS, INS, OUTS in every element size, with
/// REP/REPE/REPNE, the direction flag and 16/32/64-bit address sizes (SDM Vol. 2B "REP/REPE/REPZ/REPNE/REPNZ",
/// "MOVS", "CMPS", ...). The address size (Op.AddrMask) selects SI/ESI/RSI, DI/EDI/RDI and CX/ECX/RCX:
/// a 16-bit update changes only the low word, a 32-bit one zero-extends. The source segment may be
/// overridden (Op.Seg); the destination is always ES.
/// </summary>
/// <remarks>
/// A repeated instruction runs in bounded chunks (<see cref="ChunkIterations"/> element steps or
/// <see cref="ChunkBytes"/> bulk bytes): then it leaves RIP on itself with the registers describing
/// the completed iterations and ends the block, so pending interrupts are taken between chunks as
/// on hardware (SDM Vol. 2B REP: "interrupts ... recognized ... between iterations"). A fault in an
/// iteration leaves the completed ones committed. REP MOVS and REP STOS over RAM copy or fill whole
/// page-contained runs through host memory (memcpy/memset/clear_page in Linux; DF = 1 for memmove).
/// </remarks>
public static unsafe class StringOps
{
    public const int ChunkIterations = 4096;
    public const long ChunkBytes = 64 * 1024;

    /// <summary>This family's rows of <see cref="InstructionTable"/>. Iced names the SSE2 MOVSD and CMPSD
    /// like the string forms: those Codes are the SSE family's rows.</summary>
    internal static FormSpec[] Forms =>
    [
        .. FormSpec.Each(&Bind<MovsOp>, FormTraits.None, Mnemonic.Movsb, Mnemonic.Movsw, Mnemonic.Movsq),
        new(Code.Movsd_m32_m32, &Bind<MovsOp>),
        .. FormSpec.Each(&Bind<CmpsOp>, FormTraits.None, Mnemonic.Cmpsb, Mnemonic.Cmpsw, Mnemonic.Cmpsq),
        new(Code.Cmpsd_m32_m32, &Bind<CmpsOp>),
        .. FormSpec.Each(&Bind<ScasOp>, FormTraits.None, Mnemonic.Scasb, Mnemonic.Scasw, Mnemonic.Scasd, Mnemonic.Scasq),
        .. FormSpec.Each(&Bind<LodsOp>, FormTraits.None, Mnemonic.Lodsb, Mnemonic.Lodsw, Mnemonic.Lodsd, Mnemonic.Lodsq),
        .. FormSpec.Each(&Bind<StosOp>, FormTraits.None, Mnemonic.Stosb, Mnemonic.Stosw, Mnemonic.Stosd, Mnemonic.Stosq),
        .. IoForms(&Bind<InsOp>, Mnemonic.Insb, Mnemonic.Insw, Mnemonic.Insd),
        .. IoForms(&Bind<OutsOp>, Mnemonic.Outsb, Mnemonic.Outsw, Mnemonic.Outsd),
    ];

    static FormSpec[] IoForms(delegate*<in Instruction, ref Op, bool> bind, params Mnemonic[] mnemonics)
    {
        var specs = new FormSpec[mnemonics.Length];
        for (int i = 0; i < mnemonics.Length; i++)
        {
            specs[i] = new FormSpec(mnemonics[i], bind, FormTraits.MayFault, VmExit.IoInstruction); // I/O permission: #GP
        }
        return specs;
    }

    static bool Bind<T>(in Instruction ins, ref Op op) where T : IStringOp
    {
        int addrBits = 0;
        for (int i = 0; i < ins.OpCount; i++)
        {
            switch (ins.GetOpKind(i))
            {
                case OpKind.MemorySegSI or OpKind.MemoryESDI: addrBits = 16; break;
                case OpKind.MemorySegESI or OpKind.MemoryESEDI: addrBits = 32; break;
                case OpKind.MemorySegRSI or OpKind.MemoryESRDI: addrBits = 64; break;
            }
        }
        if (addrBits == 0)
        {
            return false;
        }
        op.AddrMask = addrBits switch { 16 => 0xFFFF, 32 => 0xFFFF_FFFF, _ => ulong.MaxValue };
        op.Seg = Binder.SegSlot(ins.MemorySegment); // source segment (DS or the override); unused for ES:DI-only forms
        op.Size = (byte)ins.MemorySize.GetSize();
        bool rep = (op.Flags & (OpFlags.Rep | OpFlags.RepNe)) != 0;
        op.Exec = rep
            ? Binder.BySize(op.Size, &Repeat<S8, T>, &Repeat<S16, T>, &Repeat<S32, T>, &Repeat<S64, T>)
            : Binder.BySize(op.Size, &Once<S8, T>, &Once<S16, T>, &Once<S32, T>, &Once<S64, T>);
        return true;
    }

    static void Once<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IStringOp => T.Step<S>(c, ref op);

    /// <summary>
    /// REP/REPE/REPNE (SDM Vol. 2B REP pseudo-code): while count ≠ 0 { step; count--; CMPS/SCAS: stop
    /// on ZF = 0 (REPE) or ZF = 1 (REPNE) }. The count is read and written at the address size.
    /// </summary>
    static void Repeat<S, T>(Cpu c, ref Op op) where S : IOpSize where T : IStringOp
    {
        ulong mask = op.AddrMask;
        ulong count = c.Regs.Gpr[1] & mask;
        T.CheckBeforeRepeat<S>(c);
        if (count == 0)
        {
            return;
        }
        bool repNe = (op.Flags & OpFlags.RepNe) != 0 && (op.Flags & OpFlags.Rep) == 0;
        // Single-stepping traps after each iteration and data/I/O breakpoints are reported after the
        // iteration that met them (SDM Vol. 3B 18.3.1.2, 18.3.1.4): one element per execution then,
        // through the checked memory accessors rather than host-memory bulk copies.
        bool oneAtATime = c.RepeatOneIterationAtATime;
        // Bulk runs are neither limit- nor alignment-checked: through a segment that needs checks (not
        // flat, or outside 64-bit mode), or while alignment checks are active (SDM Vol. 3A 6.15: each
        // element is checked), every element goes through the checked step.
        bool tryBulk = !oneAtATime && !c.AlignmentChecksActive && (c.Regs.SegCheck[op.Seg] | c.Regs.SegCheck[(int)Seg.ES]) == 0;
        int steps = oneAtATime ? 1 : ChunkIterations;
        long bytes = ChunkBytes;
        while (true)
        {
            long done = 0;
            if (tryBulk)
            {
                done = T.Bulk<S>(c, ref op, count);
                if (done < 0)
                {
                    tryBulk = false;
                    done = 0;
                }
            }
            if (done == 0)
            {
                T.Step<S>(c, ref op);
                done = 1;
                steps--;
            }
            else
            {
                bytes -= done * (S.Bits / 8);
            }
            count -= (ulong)done;
            SetAddrReg(c, 1, count, mask);
            if (count == 0)
            {
                return;
            }
            if (T.Compares && c.ZF() == repNe)
            {
                return;
            }
            if (steps <= 0 || bytes <= 0)
            {
                // Re-execute this instruction after the block ends: pending events are taken in between.
                c.NextRip = c.Rip;
                c.ExitBlock = true;
                return;
            }
        }
    }

    /// <summary>Writes SI/DI/CX at the address size: 16-bit keeps bits 63:16, 32-bit zero-extends.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SetAddrReg(Cpu c, int r, ulong v, ulong mask)
    {
        ref ulong g = ref c.Regs.Gpr[r];
        g = mask == 0xFFFF ? (g & ~0xFFFFUL) | (v & 0xFFFF) : v & mask;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong Step<S>(Cpu c) where S : IOpSize => c.DF ? (ulong)(-(S.Bits / 8)) : (ulong)(S.Bits / 8);

    /// <summary>Linear address of the source element seg:[SI], read (limit and type checked outside 64-bit mode, SDM Vol. 3A 5.3).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong SourceLinear(Cpu c, ref Op op)
    {
        ulong offset = c.Regs.Gpr[6] & op.AddrMask;
        c.CheckDataAccess(op.Seg, offset, op.Size, SegmentAccess.Read);
        return (c.Regs.SegBase[op.Seg] + offset) & c.Regs.LinearMask;
    }

    /// <summary>Linear address of the destination element ES:[DI], read or written (checked as <see cref="SourceLinear"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ulong DestLinear(Cpu c, ref Op op, SegmentAccess access)
    {
        ulong offset = c.Regs.Gpr[7] & op.AddrMask;
        c.CheckDataAccess((int)Seg.ES, offset, op.Size, access);
        return (c.Regs.SegBase[(int)Seg.ES] + offset) & c.Regs.LinearMask;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void AdvanceSource<S>(Cpu c, ref Op op, ulong step) where S : IOpSize =>
        SetAddrReg(c, 6, c.Regs.Gpr[6] + step, op.AddrMask);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void AdvanceDest<S>(Cpu c, ref Op op, ulong step) where S : IOpSize =>
        SetAddrReg(c, 7, c.Regs.Gpr[7] + step, op.AddrMask);

    /// <summary>
    /// How many whole elements from the current SI (or DI), going up (DF = 0) or down (DF = 1), stay
    /// inside one page and do not wrap the address size: the run a bulk copy may cover. 0 when the
    /// next element straddles a page.
    /// </summary>
    internal static ulong RunLength<S>(ulong linear, ulong offset, ulong mask, ulong count, bool down) where S : IOpSize
    {
        ulong e = (ulong)(S.Bits / 8);
        ulong inPage = linear & 0xFFF;
        if (inPage > 0x1000 - e)
        {
            return 0;
        }
        ulong n;
        if (!down)
        {
            n = Math.Min(count, (0x1000 - inPage) / e);
            if (mask != ulong.MaxValue)
            {
                n = Math.Min(n, (mask + 1 - offset) / e);
            }
        }
        else
        {
            n = Math.Min(count, inPage / e + 1);
            if (mask != ulong.MaxValue)
            {
                n = Math.Min(n, offset / e + 1);
            }
        }
        return n;
    }

    /// <summary>
    /// Host pointer to the lowest byte of a run of <paramref name="n"/> elements whose first (in
    /// execution order) element is at <paramref name="firstLa"/>: write access is checked on the first
    /// element (so a #PF reports its address, as the first iteration would) and cached code in the
    /// whole run is dropped. Null for MMIO.
    /// </summary>
    internal static byte* WritableRun<S>(Cpu c, ulong firstLa, ulong n, bool down) where S : IOpSize
    {
        int e = S.Bits / 8;
        byte* p = c.WritablePointer(firstLa, e);
        if (p == null)
        {
            return null;
        }
        ulong span = (n - 1) * (ulong)e;
        byte* low = down ? p - span : p;
        if (c.Ram.NoteWrite((ulong)(low - c.Ram.HostBase), span + (ulong)e))
        {
            c.ExitBlock = true; // the rest of the current block may be stale
        }
        return low;
    }

    // ------------------------------------------------------------------ port I/O (INS, OUTS, and IN/OUT if SystemOps wants it)

    /// <summary>I/O permission for INS/OUTS: the same check (and counter) as IN/OUT (SDM Vol. 1 19.5).</summary>
    public static void CheckIoPermission(Cpu c, ushort port, int size) => SystemOps.CheckIoPermission(c, port, size);

    /// <summary>Reads a port through the platform bus (under the platform's device lock when it has one).</summary>
    public static uint PortRead(Cpu c, ushort port, int size)
    {
        object? l = c.Platform.DeviceLock;
        if (l == null)
        {
            return c.Platform.Ports.Read(port, size);
        }
        lock (l)
        {
            return c.Platform.Ports.Read(port, size);
        }
    }

    public static void PortWrite(Cpu c, ushort port, int size, uint value)
    {
        object? l = c.Platform.DeviceLock;
        if (l == null)
        {
            c.Platform.Ports.Write(port, size, value);
            return;
        }
        lock (l)
        {
            c.Platform.Ports.Write(port, size, value);
        }
    }
}

/// <summary>MOVS: ES:[DI] ← seg:[SI].</summary>
public readonly unsafe struct MovsOp : IStringOp
{
    public static bool Compares => false;

    public static void Step<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = S.Load(c, StringOps.SourceLinear(c, ref op));
        S.Store(c, StringOps.DestLinear(c, ref op, SegmentAccess.Write), v);
        ulong step = StringOps.Step<S>(c);
        StringOps.AdvanceSource<S>(c, ref op, step);
        StringOps.AdvanceDest<S>(c, ref op, step);
    }

    public static long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize
    {
        bool down = c.DF;
        ulong mask = op.AddrMask;
        ulong si = c.Regs.Gpr[6] & mask, di = c.Regs.Gpr[7] & mask;
        ulong srcLa = StringOps.SourceLinear(c, ref op), dstLa = StringOps.DestLinear(c, ref op, SegmentAccess.Write);
        ulong n = Math.Min(StringOps.RunLength<S>(srcLa, si, mask, count, down), StringOps.RunLength<S>(dstLa, di, mask, count, down));
        if (n == 0)
        {
            return 0;
        }
        int e = S.Bits / 8;
        int len = (int)(n * (ulong)e);
        ulong span = (ulong)(len - e);
        // The source is translated first: its #PF comes before the destination's, as in the first iteration.
        ulong pa = c.Translate(srcLa, Access.Read, c.Cpl == 3);
        ulong paLow = down ? pa - span : pa;
        long off = c.Ram.HostOffset(paLow);
        if (off < 0 || !c.Ram.IsRamRange(paLow, (ulong)len))
        {
            return -1;
        }
        byte* dst = StringOps.WritableRun<S>(c, dstLa, n, down);
        if (dst == null)
        {
            return -1;
        }
        byte* src = c.Ram.HostBase + off;
        // Overlap where the iteration order is visible (a later element reads what an earlier one
        // wrote: the pattern-fill idiom): copy element by element in the instruction's order.
        if (!down && dst > src && dst < src + len)
        {
            for (int i = 0; i < len; i += e)
            {
                Buffer.MemoryCopy(src + i, dst + i, e, e);
            }
        }
        else if (down && dst < src && src < dst + len)
        {
            for (int i = len - e; i >= 0; i -= e)
            {
                Buffer.MemoryCopy(src + i, dst + i, e, e);
            }
        }
        else
        {
            Buffer.MemoryCopy(src, dst, len, len);
        }
        ulong delta = down ? (ulong)-len : (ulong)len;
        StringOps.SetAddrReg(c, 6, si + delta, mask);
        StringOps.SetAddrReg(c, 7, di + delta, mask);
        return (long)n;
    }
}

/// <summary>STOS: ES:[DI] ← AL/AX/EAX/RAX.</summary>
public readonly unsafe struct StosOp : IStringOp
{
    public static bool Compares => false;

    public static void Step<S>(Cpu c, ref Op op) where S : IOpSize
    {
        S.Store(c, StringOps.DestLinear(c, ref op, SegmentAccess.Write), S.GetReg(c, 0));
        StringOps.AdvanceDest<S>(c, ref op, StringOps.Step<S>(c));
    }

    public static long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize
    {
        bool down = c.DF;
        ulong mask = op.AddrMask;
        ulong di = c.Regs.Gpr[7] & mask;
        ulong dstLa = StringOps.DestLinear(c, ref op, SegmentAccess.Write);
        ulong n = StringOps.RunLength<S>(dstLa, di, mask, count, down);
        if (n == 0)
        {
            return 0;
        }
        int len = (int)(n * (ulong)(S.Bits / 8));
        byte* dst = StringOps.WritableRun<S>(c, dstLa, n, down);
        if (dst == null)
        {
            return -1;
        }
        ulong v = S.GetReg(c, 0);
        switch (S.Bits)
        {
            case 8: new Span<byte>(dst, (int)n).Fill((byte)v); break;
            case 16: new Span<ushort>(dst, (int)n).Fill((ushort)v); break;
            case 32: new Span<uint>(dst, (int)n).Fill((uint)v); break;
            default: new Span<ulong>(dst, (int)n).Fill(v); break;
        }
        StringOps.SetAddrReg(c, 7, di + (down ? (ulong)-len : (ulong)len), mask);
        return (long)n;
    }
}

/// <summary>LODS: AL/AX/EAX/RAX ← seg:[SI] (a 32-bit load zero-extends RAX).</summary>
public readonly unsafe struct LodsOp : IStringOp
{
    public static bool Compares => false;

    public static void Step<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong v = S.Load(c, StringOps.SourceLinear(c, ref op));
        S.SetReg(c, 0, v);
        StringOps.AdvanceSource<S>(c, ref op, StringOps.Step<S>(c));
    }

    public static long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize => -1;
}

/// <summary>
/// CMPS: flags of seg:[SI] − ES:[DI] (SDM CMPS: "temp ← SRC1 − SRC2", SRC1 = [SI]). ES:[DI] is read
/// first, as the host does: a fault on it (#PF, #GP, #AC) comes before one on the source.
/// </summary>
public readonly unsafe struct CmpsOp : IStringOp
{
    public static bool Compares => true;

    public static void Step<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong b = S.Load(c, StringOps.DestLinear(c, ref op, SegmentAccess.Read));
        ulong a = S.Load(c, StringOps.SourceLinear(c, ref op));
        c.FlagsSub(a, b, (a - b) & S.Mask, S.Bits);
        ulong step = StringOps.Step<S>(c);
        StringOps.AdvanceSource<S>(c, ref op, step);
        StringOps.AdvanceDest<S>(c, ref op, step);
    }

    public static long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize => -1;
}

/// <summary>SCAS: flags of AL/AX/EAX/RAX − ES:[DI].</summary>
public readonly unsafe struct ScasOp : IStringOp
{
    public static bool Compares => true;

    public static void Step<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ulong a = S.GetReg(c, 0);
        ulong b = S.Load(c, StringOps.DestLinear(c, ref op, SegmentAccess.Read));
        c.FlagsSub(a, b, (a - b) & S.Mask, S.Bits);
        StringOps.AdvanceDest<S>(c, ref op, StringOps.Step<S>(c));
    }

    public static long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize => -1;
}

/// <summary>INS: ES:[DI] ← port DX. The destination is checked for write access before the port is read.</summary>
public readonly unsafe struct InsOp : IStringOp
{
    public static bool Compares => false;

    /// <summary>The I/O permission check (IOPL, then the TSS bitmap) precedes the REP loop: a ring-3
    /// REP INS/OUTS without permission faults even when the count is 0, as the Intel host does.</summary>
    public static void CheckBeforeRepeat<S>(Cpu c) where S : IOpSize => StringOps.CheckIoPermission(c, (ushort)c.Regs.Gpr[2], S.Bits / 8);

    public static void Step<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ushort port = (ushort)c.Regs.Gpr[2];
        int size = S.Bits / 8;
        StringOps.CheckIoPermission(c, port, size);
        if (c.IoBreakpointsArmed)
        {
            c.NoteIoAccess(port, size);
        }
        ulong la = StringOps.DestLinear(c, ref op, SegmentAccess.Write);
        // Check alignment and probe every page of the element so #AC or #PF comes before the (side-effecting) port read.
        c.CheckAlignment(la, size);
        c.Translate(la, Access.Write, c.Cpl == 3);
        c.Translate((la + (ulong)size - 1) & c.Regs.LinearMask, Access.Write, c.Cpl == 3);
        uint v = StringOps.PortRead(c, port, size);
        S.Store(c, la, v);
        StringOps.AdvanceDest<S>(c, ref op, StringOps.Step<S>(c));
    }

    public static long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize => -1;
}

/// <summary>OUTS: port DX ← seg:[SI].</summary>
public readonly unsafe struct OutsOp : IStringOp
{
    public static bool Compares => false;

    /// <summary>The I/O permission check (IOPL, then the TSS bitmap) precedes the REP loop: a ring-3
    /// REP INS/OUTS without permission faults even when the count is 0, as the Intel host does.</summary>
    public static void CheckBeforeRepeat<S>(Cpu c) where S : IOpSize => StringOps.CheckIoPermission(c, (ushort)c.Regs.Gpr[2], S.Bits / 8);

    public static void Step<S>(Cpu c, ref Op op) where S : IOpSize
    {
        ushort port = (ushort)c.Regs.Gpr[2];
        int size = S.Bits / 8;
        StringOps.CheckIoPermission(c, port, size);
        if (c.IoBreakpointsArmed)
        {
            c.NoteIoAccess(port, size);
        }
        ulong v = S.Load(c, StringOps.SourceLinear(c, ref op));
        StringOps.PortWrite(c, port, size, (uint)v);
        StringOps.AdvanceSource<S>(c, ref op, StringOps.Step<S>(c));
    }

    public static long Bulk<S>(Cpu c, ref Op op, ulong count) where S : IOpSize => -1;
}
