using System.Runtime.CompilerServices;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Translation;

/// <summary>
/// A translation (<see cref="BlockCompiler"/>): the .NET code of a region of blocks, the blocks it
/// runs, and its exits' chain cells. The code's first argument is this object.
/// </summary>
/// <remarks>
/// Translated code is called through its native entry point (<see cref="Entry"/>) rather than its
/// delegate: a dynamic method's delegate points at a precode stub that jumps to the code through a
/// data slot on another host page, and with a few thousand translations in use (a busybox shell loop
/// runs ~2,000 blocks per iteration) those stubs' pages missed the host caches and TLBs on most
/// transitions (measured on this machine kind: ~35 ns per transition through the delegate, ~20 through
/// the entry point, ~6 when the code goes on to the next translation itself through
/// <see cref="Exits"/> — measured with 2,000 dynamic methods called in a fixed random cycle).
/// </remarks>
public sealed class CompiledRegion
{
    /// <summary>The region's blocks, the first being where the code is entered.</summary>
    public readonly Block[] Blocks;
    /// <summary>The code as a delegate: what keeps the dynamic method, and so <see cref="Entry"/>, alive.</summary>
    public CompiledBlock Code { get; private set; } = null!;
    /// <summary>The code's native entry point, or 0 when the runtime's stub was not recognised (the
    /// delegate is called then).</summary>
    public nint Entry { get; private set; }
    /// <summary>
    /// Two chain cells per block: translations that ran after that block, with what they are valid
    /// for, so the code goes on to one without returning to the run loop (<see cref="Cpu.ChainFrom"/>).
    /// The first block's are in this object (most translations are one block: one cache line fewer
    /// to miss on a transition), the others' in <see cref="_laterExits"/>. Filled only by the vCPU
    /// the blocks belong to; the translator thread only clears their targets (<see cref="Evict"/>),
    /// and a reader that sees a matching cell with no target simply does not chain.
    /// </summary>
    ChainCellPair _firstExits;
    readonly ChainCellPair[] _laterExits;

    /// <summary>The first of block <paramref name="member"/>'s two chain cells (the other follows it).</summary>
    public ref ChainCell Exits(int member) => ref member == 0 ? ref _firstExits[0] : ref _laterExits[member - 1][0];
    /// <summary>Set when the translator dropped this translation to stay within its capacity: its
    /// cells are cleared and not filled again, so it keeps no other translation alive.</summary>
    public volatile bool Evicted;

    public CompiledRegion(Block[] blocks)
    {
        Blocks = blocks;
        _laterExits = new ChainCellPair[blocks.Length - 1];
    }

    /// <summary>Attaches the compiled code (once the JIT has compiled it: see <see cref="BlockCompiler"/>).</summary>
    internal void SetCode(CompiledBlock code)
    {
        Code = code;
        Entry = NativeEntry(code);
    }

    /// <summary>Runs the code on <paramref name="cpu"/>; returns the instructions it retired, as the
    /// delegate would.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public unsafe int Run(Cpu cpu)
    {
        nint entry = Entry;
        int retired = entry != 0 ? ((delegate* managed<CompiledRegion, Cpu, int>)entry)(this, cpu) : Code(cpu);
        GC.KeepAlive(this); // the code lives as long as its delegate, which this holds
        return retired;
    }

    /// <summary>Drops the cells (see <see cref="Evicted"/>).</summary>
    internal void Evict()
    {
        Evicted = true;
        for (int member = 0; member < Blocks.Length; member++)
        {
            ref ChainCell cell = ref Exits(member);
            cell.Target = null;
            Unsafe.Add(ref cell, 1).Target = null;
        }
    }

    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_methodPtr")]
    static extern ref nint MethodPointer(Delegate d);

    /// <summary>
    /// Where the JIT put the code of <paramref name="code"/>'s method. A delegate closed over its
    /// first argument points at the method's entry, which for a dynamic method is a precode stub whose
    /// first instruction is <c>jmp [rip+disp32]</c> (FF 25) through the slot holding the code's
    /// address once the method is compiled. Anything else gives 0 and the delegate is used.
    /// </summary>
    static unsafe nint NativeEntry(CompiledBlock code)
    {
        byte* stub = (byte*)MethodPointer(code);
        if (stub == null || stub[0] != 0xFF || stub[1] != 0x25)
        {
            return 0;
        }
        nint target = *(nint*)(stub + 6 + *(int*)(stub + 2));
        // A slot still aiming back into the stub means the code is not compiled yet.
        return target is 0 || (target >= (nint)stub && target < (nint)stub + 64) ? 0 : target;
    }
}

[InlineArray(2)]
public struct ChainCellPair
{
    ChainCell _cell;
}

/// <summary>
/// A translation that ran after a block, as <see cref="BlockLink"/> remembers a block: valid while
/// neither the vCPU's code mappings nor any code page changed since (the same test).
/// </summary>
public struct ChainCell
{
    public CompiledRegion? Target;
    public ulong Linear;
    public long MapEpoch;
    public long CodeWrites;

    /// <summary>The cell is for <paramref name="linear"/> and nothing it depends on has changed since it was filled.</summary>
    public readonly bool Matches(ulong linear, long mapEpoch, long codeWrites) =>
        Linear == linear && MapEpoch == mapEpoch && CodeWrites == codeWrites;
}
