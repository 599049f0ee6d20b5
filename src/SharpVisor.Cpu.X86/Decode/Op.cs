using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SharpVisor.Cpu.X86.Decode;

/// <summary>
/// One decoded instruction in the form the interpreter executes (and a translator will consume):
/// the handler chosen for its exact operand form and size at decode time, plus operands as small
/// register-slot indices and immediates. Decoded once per physical page visit, cached in a
/// <see cref="Block"/>; never allocated on the execution path.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct Op
{
    /// <summary>The semantic handler for this form (Semantics/*.cs).</summary>
    public delegate*<Cpu, ref Op, void> Exec;
    /// <summary>Immediate (sign- or zero-extended as the instruction defines) or relative branch displacement.</summary>
    public ulong Imm;
    /// <summary>Memory displacement (sign-extended).</summary>
    public long Disp;
    /// <summary>Mask applied to the effective address: 0xFFFF, 0xFFFF_FFFF or all ones (address size).</summary>
    public ulong AddrMask;
    /// <summary>Second immediate (ENTER's nesting level, far pointer selector...) or family-specific data.</summary>
    public uint Imm2;
    /// <summary>Iced <c>Code</c> of the instruction: the index of its row in <see cref="InstructionTable"/>
    /// (flags, faults, block end, VM exit: what a translator asks), and diagnostics.</summary>
    public ushort Code;
    /// <summary>Instruction length in bytes.</summary>
    public byte Len;
    /// <summary>Operand size in bytes (1, 2, 4, 8); some families store another width here, documented there.</summary>
    public byte Size;
    /// <summary>First register operand (usually the destination): a <see cref="RegisterFile.Gpr"/> slot, or 20..23 for AH..BH.</summary>
    public byte R1;
    /// <summary>Second register operand (usually the source).</summary>
    public byte R2;
    /// <summary>Memory operand: base slot (16 = none, 17 = RIP-relative), index slot (16 = none), scale shift, segment.</summary>
    public byte Base, Index, Scale, Seg;
    /// <summary>Family-specific sub-operation (ALU operation, condition code, string element size...).</summary>
    public byte Sub;
    public OpFlags Flags;
    /// <summary>Stack address size in bytes for implicit stack accesses, or the address size for string ops.</summary>
    public byte Aux;
    /// <summary>Bytes the memory operand covers (Iced's memory size; 1 when it has none) and whether the
    /// instruction reads and/or writes it: what the segment limit and type checks need (SDM Vol. 3A 5.3, 5.4).
    /// These fit in the struct's former padding.</summary>
    public ushort MemSize;
    public SegmentAccess MemAccess;

    /// <summary>Effective address (offset within the segment) of the memory operand.</summary>
    public readonly ulong Offset(Cpu c) =>
        (c.Regs.Gpr[Base] + (c.Regs.Gpr[Index] << Scale) + (ulong)Disp) & AddrMask;

    /// <summary>
    /// Linear address of the memory operand: segment base + effective address. Outside 64-bit mode,
    /// through a segment that is not flat writable data, the access is first checked against the
    /// segment's limit and type (one predictable branch otherwise); in 64-bit mode every byte of it
    /// must be canonical, else #SS(0) for an RSP/RBP base and #GP(0) otherwise (Cpu.Canonical.cs).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly ulong Linear(Cpu c)
    {
        ulong ea = (c.Regs.Gpr[Base] + (c.Regs.Gpr[Index] << Scale) + (ulong)Disp) & AddrMask;
        if (c.Regs.SegCheck[Seg] != 0)
        {
            c.CheckSegmentAccess(Seg, ea, MemSize, MemAccess);
        }
        ulong la = (c.Regs.SegBase[Seg] + ea) & c.Regs.LinearMask;
        if (Cpu.MaybeNonCanonical(la, MemSize))
        {
            c.CheckOperandCanonical(la, MemSize, Base, Flags);
        }
        return la;
    }
}

/// <summary>How an instruction uses a memory operand, for the segment type checks (SDM Vol. 3A 5.4).</summary>
[Flags]
public enum SegmentAccess : byte
{
    /// <summary>No access (LEA, NOP m, PREFETCHh, INVLPG): no segment checks.</summary>
    None = 0,
    Read = 1,
    Write = 2,
    ReadWrite = Read | Write,
}

[Flags]
public enum OpFlags : byte
{
    None = 0,
    Lock = 1,
    Rep = 2,
    RepNe = 4,
    /// <summary>The block ends after this instruction (branches, mode changes, HLT...).</summary>
    EndsBlock = 8,
    /// <summary>The first operand is in memory (the form uses Base/Index/Disp).</summary>
    MemoryOperand = 16,
    /// <summary>A legacy-SSE 128-bit memory operand that must be 16-byte aligned: its #GP for
    /// misalignment comes before the canonical-address fault (#SS or #GP), as on the host.</summary>
    Aligned16 = 32,
    /// <summary>Some operand is in memory (not only the first): the form can fault through it.</summary>
    AnyMemoryOperand = 64,
}

/// <summary>
/// Decoded instructions from one physical page, in execution order from an entry point to the
/// first branch (or other block-ending instruction), the page end, or <see cref="MaxOps"/>.
/// </summary>
/// <remarks>
/// <see cref="Ops"/> is exactly as long as the block (a typical block is a handful of
/// instructions): blocks decoded together then sit together in host memory, so running guest code
/// touches few host cache lines and pages. A fixed 64-op array per block put every block on a
/// host page of its own, and host TLB and cache misses dominated user-space workloads.
/// </remarks>
public sealed class Block(Op[] ops)
{
    public const int MaxOps = 64;
    public readonly Op[] Ops = ops;
    public int Count => Ops.Length;

    /// <summary><see cref="SecondPage"/> of a block that lies within one page.</summary>
    public const ulong NoSecondPage = ulong.MaxValue;
    /// <summary>
    /// For a block holding one instruction that straddles a page boundary: the host RAM offset of
    /// the page its last bytes came from, and that page's generation when decoded. The block is
    /// valid only while the next linear page still maps there and that page is unchanged.
    /// </summary>
    public ulong SecondPage = NoSecondPage;
    public uint SecondGeneration;

    /// <summary>Where the block was decoded from: the host RAM offset of its first byte (<see cref="Unknown"/>
    /// for a block cut short at a CS limit, which is never cached), the code size and the page's
    /// generation then. Two blocks from the same page and generation were decoded from the same bytes.</summary>
    public ulong RamOffset = Unknown;
    public int Bits;
    public uint Generation;
    public const ulong Unknown = ulong.MaxValue;

    /// <summary>
    /// The blocks that ran right after this one, remembered so the run loop can go on to them without
    /// looking them up (a taken and a fall-through successor fit; see <c>Cpu.NextBlock</c>).
    /// </summary>
    public BlockLink Link0, Link1;

    /// <summary>Interpreted runs so far (counted by the owning vCPU while translation is on).</summary>
    public int Heat;
    /// <summary>The block's translation, once the translator has made one (set from its thread).</summary>
    public Translation.CompiledRegion? Compiled;
}

/// <summary>
/// A successor of a block as the run loop found it: the block at linear address <see cref="Linear"/>,
/// valid while neither the vCPU's code translations (<see cref="MapEpoch"/>: TLB flushes, INVLPG, a
/// change of privilege or code size) nor any code page in RAM (<see cref="CodeWrites"/>) have changed
/// since — then a lookup would find this very block again.
/// </summary>
public struct BlockLink
{
    public Block? Target;
    public ulong Linear;
    public long MapEpoch;
    public long CodeWrites;

    /// <summary>Nothing the link depends on has changed since it was made.</summary>
    public readonly bool IsCurrent(long mapEpoch, long codeWrites) => MapEpoch == mapEpoch && CodeWrites == codeWrites;
}
