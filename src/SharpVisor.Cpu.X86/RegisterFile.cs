using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// The registers instruction handlers touch on every instruction, kept in one struct inside
/// <see cref="Cpu"/> so that indexing them is plain address arithmetic (fixed buffers, no bounds
/// checks): an instruction's register operands are small indices decoded once.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct RegisterFile
{
    /// <summary>Slot of the always-zero register used for an absent base or index.</summary>
    public const int Zero = 16;
    /// <summary>Slot holding the next instruction's RIP: the base of RIP-relative addressing.</summary>
    public const int NextRip = 17;
    /// <summary>8-bit register operands 20..23 name AH, CH, DH, BH (bits 15:8 of RAX..RBX).</summary>
    public const int HighByteBase = 20;

    /// <summary>RAX..R15 in encoding order, then <see cref="Zero"/> and <see cref="NextRip"/>.</summary>
    public fixed ulong Gpr[18];

    /// <summary>
    /// Base added to effective addresses for each segment in encoding order (ES, CS, SS, DS, FS, GS),
    /// then slot 6 which is always zero (no segment). In 64-bit mode ES/CS/SS/DS read as zero here.
    /// </summary>
    public fixed ulong SegBase[8];

    /// <summary>
    /// Per segment (same numbering as <see cref="SegBase"/>): nonzero when an access through it needs
    /// the limit and type checks of SDM Vol. 3A 5.3/5.4 (<see cref="Cpu.CheckSegmentAccess"/>). Zero in
    /// 64-bit mode and for flat 4 GiB expand-up writable data segments, so the common case costs one
    /// predictable branch. Recomputed whenever a segment register or the mode changes.
    /// </summary>
    public fixed byte SegCheck[8];

    /// <summary>Mask applied to linear addresses: 2^32-1 outside long mode.</summary>
    public ulong LinearMask;

    // ---- lazy arithmetic flags (see Cpu.Flags.cs) ----
    /// <summary>Result of the last flag-setting operation, sign-extended to 64 bits (gives ZF, SF, PF).</summary>
    public ulong FlagRes;
    /// <summary>CF (bit 0), AF (bit 4) and OF (bit 11) as computed; PF (bit 2) and SF (bit 7) inverters.</summary>
    public ulong FlagAux;
}

/// <summary>A segment register's visible selector and hidden descriptor cache (SDM Vol. 3A 3.4.3).</summary>
public struct SegmentRegister
{
    public ushort Selector;
    public ulong Base;
    /// <summary>Byte-granular limit (already scaled by G).</summary>
    public uint Limit;
    /// <summary>Descriptor bits 40..55 packed: type (3:0), S (4), DPL (6:5), P (7), AVL (12), L (13), D/B (14), G (15).</summary>
    public ushort Attributes;

    public readonly int Dpl => (Attributes >> 5) & 3;
    public readonly bool Present => (Attributes & 0x80) != 0;
    public readonly bool Long => (Attributes & 0x2000) != 0;
    public readonly bool Big => (Attributes & 0x4000) != 0;
    public readonly int Type => Attributes & 0xF;
    public readonly bool IsSystem => (Attributes & 0x10) == 0;

    public override readonly string ToString() => $"{Selector:x4} base={Base:x} limit={Limit:x} attr={Attributes:x4}";
}

/// <summary>Segment register numbers in x86 encoding order.</summary>
public enum Seg : byte { ES = 0, CS = 1, SS = 2, DS = 3, FS = 4, GS = 5, None = 6 }

/// <summary>Architectural RFLAGS bits (SDM Vol. 1 3.4.3).</summary>
public static class RFlags
{
    public const ulong CF = 1 << 0, Reserved1 = 1 << 1, PF = 1 << 2, AF = 1 << 4, ZF = 1 << 6, SF = 1 << 7;
    public const ulong TF = 1 << 8, IF = 1 << 9, DF = 1 << 10, OF = 1 << 11, IOPL = 3 << 12, NT = 1 << 14;
    public const ulong RF = 1 << 16, VM = 1 << 17, AC = 1 << 18, VIF = 1 << 19, VIP = 1 << 20, ID = 1 << 21;
    /// <summary>The six arithmetic flags, which live lazily in <see cref="RegisterFile.FlagRes"/>/<see cref="RegisterFile.FlagAux"/>.</summary>
    public const ulong Arith = CF | PF | AF | ZF | SF | OF;
    /// <summary>Bits software can change at all (others read as their fixed values).</summary>
    public const ulong Writable = Arith | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;
}

public static class Cr0
{
    public const ulong PE = 1, MP = 2, EM = 4, TS = 8, ET = 0x10, NE = 0x20, WP = 1 << 16, AM = 1 << 18, NW = 1 << 29, CD = 1 << 30, PG = 1UL << 31;
}

public static class Cr4
{
    public const ulong VME = 1, PVI = 2, TSD = 4, DE = 8, PSE = 0x10, PAE = 0x20, MCE = 0x40, PGE = 0x80, PCE = 0x100;
    public const ulong OSFXSR = 0x200, OSXMMEXCPT = 0x400, UMIP = 0x800, LA57 = 0x1000, VMXE = 0x2000, FSGSBASE = 0x10000;
    public const ulong PCIDE = 0x20000, OSXSAVE = 0x40000, SMEP = 0x100000, SMAP = 0x200000, PKE = 0x400000;
}

public static class Efer
{
    public const ulong SCE = 1, LME = 1 << 8, LMA = 1 << 10, NXE = 1 << 11;
}

/// <summary>The processor's current operating mode (SDM Vol. 3A 2.2), derived from CR0, EFER, CS and RFLAGS.VM.</summary>
public enum CpuMode : byte { Real, Virtual8086, Protected, Compatibility, Long64 }

internal static class RegisterFileExtensions
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe ref ulong Reg(this ref RegisterFile r, int index) => ref r.Gpr[index];
}
