using System.Reflection;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Semantics;

namespace SharpVisor.Cpu.X86.Translation;

/// <summary>
/// Chooses the blocks one translation runs: a hot block and the successors that ran after it on the
/// same page (its <see cref="Block.Link0"/>/<see cref="Block.Link1"/>, and theirs), so that a loop or
/// an if/else within a page runs inside one .NET method — the translated code goes from block to
/// block with a compare and a jump instead of returning to the run loop (issue 10's chaining).
/// </summary>
/// <remarks>
/// A member must come from the same RAM page, code size and page generation as the first block:
/// then it was decoded from the same bytes, so whenever the run loop validly enters the region
/// (the first block's page unchanged, the linear page mapping to it), every member is valid too
/// and lies on the same linear page — a transition only compares RIP. A block is followed only when
/// it ends in a near branch (or at <see cref="Block.MaxOps"/>): a far transfer, a mode change, INVLPG,
/// MOV CR3, HLT... return to the run loop, which looks the next block up afresh.
/// </remarks>
public static class RegionBuilder
{
    /// <summary>Most blocks in one region. Compile time grows with the region's IL (~1 us per byte).</summary>
    public const int MaxBlocks = 8;

    static readonly string[] s_nearBranches = ["Jcc", "JmpRel", "JmpR", "JmpM", "CallRel", "CallR", "CallM", "Ret", "Jcxz", "Loop"];

    /// <summary>The region starting at <paramref name="head"/>: it first, then successors in the order found.</summary>
    public static Block[] Select(Block head)
    {
        var members = new List<Block> { head };
        if (head.RamOffset == Block.Unknown || head.SecondPage != Block.NoSecondPage)
        {
            return [.. members];
        }
        for (int i = 0; i < members.Count && members.Count < MaxBlocks; i++)
        {
            Block m = members[i];
            if (!MayContinueAfter(m))
            {
                continue;
            }
            foreach (Block? next in (ReadOnlySpan<Block?>)[m.Link0.Target, m.Link1.Target])
            {
                if (next is not null && members.Count < MaxBlocks && !members.Contains(next) && SameCode(head, next))
                {
                    members.Add(next);
                }
            }
        }
        return OnLoopsThroughHead(members);
    }

    /// <summary>
    /// Keeps the first block and the members from which it can be reached again within the region:
    /// the loops through it. Only a loop repays a region's compile time (about 1 us of JIT per IL
    /// byte; measured: regions of every successor made 2,630 translations cost 17.6 s of translator
    /// time in a boot and user-space run, against 3.6 s for single blocks), because the code then
    /// stays in one method for many block transitions.
    /// </summary>
    static Block[] OnLoopsThroughHead(List<Block> members)
    {
        // reaches[i]: the first block can be reached from member i (itself, trivially).
        var reaches = new bool[members.Count];
        reaches[0] = true;
        for (bool changed = true; changed;)
        {
            changed = false;
            for (int i = 1; i < members.Count; i++)
            {
                if (!reaches[i] && members.Where((m, j) => reaches[j] && Leads(members[i], m)).Any())
                {
                    reaches[i] = changed = true;
                }
            }
        }
        // Every member was found from the first, so one that leads back to it closes a loop.
        bool loop = Leads(members[0], members[0]) || reaches.Skip(1).Contains(true);
        if (!loop)
        {
            return [members[0]];
        }
        int instructions = 0;
        var kept = new List<Block>();
        for (int i = 0; i < members.Count; i++)
        {
            if (reaches[i] && instructions + members[i].Count <= MaxInstructions)
            {
                kept.Add(members[i]);
                instructions += members[i].Count;
            }
        }
        return [.. kept];
    }

    static bool Leads(Block from, Block to) => from.Link0.Target == to || from.Link1.Target == to;

    /// <summary>Most instructions in one region, for the same reason.</summary>
    public const int MaxInstructions = 64;

    /// <summary>True when <paramref name="b"/> was decoded from the same bytes as the region's first block.</summary>
    static bool SameCode(Block head, Block b) =>
        b.RamOffset != Block.Unknown && b.SecondPage == Block.NoSecondPage
        && b.RamOffset >> 12 == head.RamOffset >> 12 && b.Generation == head.Generation && b.Bits == head.Bits;

    /// <summary>The block ends in a near branch, call or return, or was cut at <see cref="Block.MaxOps"/>
    /// after an ordinary instruction: what it leaves behind is only a new RIP.</summary>
    internal static unsafe bool MayContinueAfter(Block b)
    {
        ref Op last = ref b.Ops[^1];
        ref readonly var form = ref InstructionTable.Form((Iced.Intel.Code)last.Code);
        if (form.EndsBlock == BlockEnd.None)
        {
            return (last.Flags & OpFlags.EndsBlock) == 0;
        }
        if (form.EndsBlock != BlockEnd.ControlFlow)
        {
            return false;
        }
        MethodInfo? handler = HandlerMethods.Find((nint)last.Exec);
        return handler?.DeclaringType == typeof(Control) && Array.IndexOf(s_nearBranches, handler.Name) >= 0;
    }
}
