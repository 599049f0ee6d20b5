using System.Runtime.CompilerServices;
using Iced.Intel;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// Block decoding and the per-vCPU block cache: a 2-way set-associative table keyed by (host RAM
/// offset, code size). Each instruction is bound through its row in <see cref="InstructionTable"/>,
/// which also says whether the block ends after it. A block is valid while its page's generation in <see cref="SharpVisor.Core.GuestMemory"/>
/// is unchanged: any write to the page — this vCPU, another one, or DMA — bumps it.
/// </summary>
public sealed unsafe partial class Cpu
{
    /// <summary>
    /// The block cache is 2-way set associative, 32 Ki sets. A direct-mapped table thrashed on
    /// user-space loops: a shell loop touches ~3000 blocks, and by the birthday effect dozens of
    /// them share a slot in any direct-mapped table of practical size, each conflict costing a
    /// decode per iteration (measured: 58 misses per iteration of a busybox ash loop with 16 Ki
    /// direct-mapped slots, 19 with 64 Ki).
    /// </summary>
    const int BlockCacheSetBits = 15;

    /// <summary>A block cache slot: the key lives in the slot, so a lookup reads the set's two
    /// adjacent slots (48 bytes) and touches the block only on a hit.</summary>
    struct CachedBlock
    {
        /// <summary>Host RAM offset of the block's first instruction.</summary>
        public ulong RamOffset;
        public Block? Block;
        /// <summary>Generation of the page when decoded; a different current generation means stale.</summary>
        public uint Generation;
        /// <summary>Code size (16/32/64) the block was decoded for.</summary>
        public int Bits;
    }

    /// <summary>Set i is slots 2i (most recently filled or hit) and 2i+1.</summary>
    readonly CachedBlock[] _blockCache = new CachedBlock[2 << BlockCacheSetBits];
    readonly WindowCodeReader _reader = new();
    Decoder? _decoder16, _decoder32, _decoder64;
    /// <summary>Where a block is decoded before it is copied into a block of its exact length.</summary>
    readonly Op[] _decodeBuffer = new Op[Block.MaxOps];
    /// <summary>Holds an instruction that straddles two pages while it is decoded; a copy is cached
    /// with what its second page must stay.</summary>
    readonly Block _straddleBlock = new(new Op[1]);
    /// <summary>Host RAM offset and generation of the second page of the last straddling decode.</summary>
    ulong _straddleSecondPage;
    uint _straddleSecondGeneration;
    readonly byte[] _straddleBytes = new byte[16];

    Decoder DecoderFor(int bits) => bits switch
    {
        64 => _decoder64 ??= Decoder.Create(64, _reader, DecoderOptions.None),
        32 => _decoder32 ??= Decoder.Create(32, _reader, DecoderOptions.None),
        _ => _decoder16 ??= Decoder.Create(16, _reader, DecoderOptions.None),
    };

    /// <summary>
    /// The block at CS:RIP, found first among the successors <paramref name="previous"/> (the block
    /// that just ran) remembers: a loop or a call/return pair goes from block to block without the
    /// TLB lookup and the cache probe of <see cref="FetchBlock"/> (measured as a fifth of a busybox
    /// shell loop's time). A remembered successor is trusted while nothing it depends on can have
    /// changed (see <see cref="BlockLink"/>): the mapping epoch covers what the code TLB lookup and
    /// the cache's code-size check decide, the RAM's code-write count what its generation check does.
    /// Code under a CS limit check (<see cref="_fetchLimitCheck"/>) always takes the full lookup.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    Block NextBlock(Block? previous)
    {
        if (previous is null || _fetchLimitCheck)
        {
            Counters.BlockLookups.IncrementUnsynchronized();
            return FetchBlock();
        }
        ulong la = (Regs.SegBase[(int)Seg.CS] + Rip) & Regs.LinearMask;
        long codeWrites = Ram.CodeWrites;
        if (previous.Link0.Linear == la && previous.Link0.IsCurrent(_codeMapEpoch, codeWrites) && previous.Link0.Target is { } first)
        {
            return first;
        }
        if (previous.Link1.Linear == la && previous.Link1.IsCurrent(_codeMapEpoch, codeWrites) && previous.Link1.Target is { } second)
        {
            return second;
        }
        return FetchAndLink(previous, la, codeWrites);
    }

    /// <summary>Looks the block up and remembers it as a successor of <paramref name="previous"/>.
    /// <paramref name="codeWrites"/> was read before the lookup, so a write racing with it leaves the
    /// link already stale.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    Block FetchAndLink(Block previous, ulong la, long codeWrites)
    {
        Counters.BlockLookups.IncrementUnsynchronized();
        long epoch = _codeMapEpoch;
        Block b = FetchBlockUnchecked();
        if (b.SecondPage == Block.NoSecondPage && epoch == _codeMapEpoch)
        {
            // The older link goes unless it is still valid (a branch's other side); a stale one is
            // dropped either way, so links do not keep superseded blocks alive.
            previous.Link1 = previous.Link0.IsCurrent(epoch, codeWrites) ? previous.Link0 : default;
            previous.Link0 = new BlockLink { Target = b, Linear = la, MapEpoch = epoch, CodeWrites = codeWrites };
        }
        return b;
    }

    /// <summary>Finds or decodes the block starting at CS:RIP. May raise #PF (fetch) or #GP.</summary>
    Block FetchBlock() => _fetchLimitCheck ? FetchBlockWithinCsLimit() : FetchBlockUnchecked();

    Block FetchBlockUnchecked()
    {
        ulong la = (Regs.SegBase[(int)Seg.CS] + Rip) & Regs.LinearMask;
        ulong ramOffset = FetchHostOffset(la);

        int set = (int)((ramOffset ^ (ramOffset >> BlockCacheSetBits)) & ((1 << BlockCacheSetBits) - 1));
        ref CachedBlock slot = ref _blockCache[2 * set];
        if (Holds(in slot, ramOffset, la))
        {
            return slot.Block!;
        }
        ref CachedBlock other = ref Unsafe.Add(ref slot, 1);
        if (Holds(in other, ramOffset, la))
        {
            (slot, other) = (other, slot); // keep the most recently used block in the first way
            return slot.Block!;
        }
        Counters.BlockCacheMisses.IncrementUnsynchronized();
        uint generation = Ram.MarkCode(ramOffset); // mark before reading: a racing write bumps the generation
        int count = DecodeBlock(la, ramOffset);
        Block block;
        if (count > 0)
        {
            block = new Block(_decodeBuffer.AsSpan(0, count).ToArray());
        }
        else
        {
            // The first instruction straddles a page: cached with what its second page must stay.
            block = new Block([_straddleBlock.Ops[0]]) { SecondPage = _straddleSecondPage, SecondGeneration = _straddleSecondGeneration };
        }
        block.RamOffset = ramOffset;
        block.Bits = CodeBits;
        block.Generation = generation;
        if (other.Block is { } dropped)
        {
            // A block no longer cached holds on to no successors: links cannot chain superseded blocks.
            dropped.Link0 = dropped.Link1 = default;
        }
        other = slot; // the first way's block becomes the set's older one; the older one is dropped
        slot = new CachedBlock { RamOffset = ramOffset, Block = block, Generation = generation, Bits = CodeBits };
        return block;
    }

    /// <summary>True when the slot holds a still valid block for the code at <paramref name="ramOffset"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    bool Holds(in CachedBlock slot, ulong ramOffset, ulong la) =>
        slot.RamOffset == ramOffset && slot.Bits == CodeBits && slot.Generation == Ram.Generation(ramOffset) && slot.Block is { } b
        && (b.SecondPage == Block.NoSecondPage || SecondPageUnchanged(b, la));

    /// <summary>Host RAM offset of the code byte at linear address <paramref name="la"/>, through the
    /// TLB's execute tag or a walk (which may raise #PF). Code runs only from RAM: a fetch from MMIO
    /// or from an address nothing claims raises #UD (see <see cref="FetchOutsideRam"/>).</summary>
    ulong FetchHostOffset(ulong la)
    {
        ref TlbEntry e = ref _codeTlb[(int)(la >> 12) & (TlbSize - 1)];
        if (e.ExecTag == (la & PageMask))
        {
            return e.RamOffset + (la & 0xFFF);
        }
        ulong pa = TranslateAndFill(la, Access.Execute);
        long off = Ram.HostOffset(pa);
        if (off < 0)
        {
            throw FetchOutsideRam(pa, la);
        }
        return (ulong)off;
    }

    /// <summary>
    /// An instruction fetch from outside RAM. QEMU executes such code from the device, one
    /// instruction at a time; SharpVisor does not run code from device registers (nothing a real
    /// guest relies on does it, and it would put reads with side effects on the fetch path). The
    /// instruction raises #UD instead, counted and logged once, so the guest handles it as a bad
    /// instruction (Linux: SIGILL for a process, an oops in the kernel) and the VM goes on.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    GuestFault FetchOutsideRam(ulong pa, ulong la)
    {
        Counters.FetchesOutsideRam.IncrementUnsynchronized();
        Log.Once($"cpu{Index}.fetch_outside_ram", $"cpu{Index}", $"instruction fetch from physical address 0x{pa:x} (linear 0x{la:x}), which is not RAM: #UD (code runs only from RAM)");
        return InvalidOpcode();
    }

    /// <summary>
    /// A cached straddling instruction is still valid when the linear page after the one it starts
    /// in maps to the same RAM page as when it was decoded, and that page was not written since.
    /// Translating that page may raise #PF, exactly as fetching the instruction's bytes would.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    bool SecondPageUnchanged(Block b, ulong la)
    {
        ulong second = ((la | 0xFFF) + 1) & Regs.LinearMask;
        ulong offset = FetchHostOffset(second);
        return offset == b.SecondPage && Ram.Generation(offset) == b.SecondGeneration;
    }

    /// <summary>Decodes into <see cref="_decodeBuffer"/> and returns the number of instructions;
    /// 0 when the first instruction straddles a page (then <see cref="_straddleBlock"/> holds it,
    /// decoded from both pages).</summary>
    int DecodeBlock(ulong la, ulong ramOffset)
    {
        Counters.BlocksDecoded.IncrementUnsynchronized();
        int pageLeft = (int)(0x1000 - (ramOffset & 0xFFF));
        _reader.Set(Ram.HostBase + ramOffset, pageLeft);
        var decoder = DecoderFor(CodeBits);
        decoder.IP = Rip;
        int count = 0;
        while (count < Block.MaxOps)
        {
            decoder.Decode(out Instruction ins);
            if (decoder.LastError == DecoderError.NoMoreBytes)
            {
                if (count == 0)
                {
                    DecodeStraddling(la, pageLeft);
                }
                break; // otherwise the next instruction starts a block of its own
            }
            ref Op op = ref _decodeBuffer[count++];
            Binder.Bind(ins, ref op);
            if ((op.Flags & OpFlags.EndsBlock) != 0 || _reader.Position >= pageLeft)
            {
                break;
            }
        }
        return count;
    }

    /// <summary>Decodes the single instruction at <paramref name="la"/> whose bytes continue on the next page.</summary>
    void DecodeStraddling(ulong la, int firstPart)
    {
        Counters.StraddlingDecodes.IncrementUnsynchronized();
        for (int i = 0; i < firstPart && i < 15; i++)
        {
            _straddleBytes[i] = (byte)PhysRead(Translate(la + (ulong)i, Access.Execute, Cpl == 3), 1);
        }
        ulong next = (la + (ulong)firstPart) & Regs.LinearMask;
        ulong pa = Translate(next, Access.Execute, Cpl == 3);
        long secondPage = Ram.HostOffset(pa & ~0xFFFUL);
        if (secondPage < 0)
        {
            throw FetchOutsideRam(pa, next);
        }
        _straddleSecondPage = (ulong)secondPage;
        // Mark before reading, as for the first page: a racing write bumps the generation.
        _straddleSecondGeneration = Ram.MarkCode(_straddleSecondPage);
        for (int i = firstPart; i < 15; i++)
        {
            _straddleBytes[i] = (byte)PhysRead(pa + (ulong)(i - firstPart), 1);
        }
        fixed (byte* p = _straddleBytes)
        {
            _reader.Set(p, 15);
            var decoder = DecoderFor(CodeBits);
            decoder.IP = Rip;
            decoder.Decode(out Instruction ins);
            Binder.Bind(ins, ref _straddleBlock.Ops[0]);
        }
    }

    /// <summary>Drops every cached block (e.g. after a mode change that alters decoding).</summary>
    public void FlushCodeCache() => Array.Clear(_blockCache);
}

/// <summary>Thrown when the guest did something the VMM cannot continue from (reported to the user, VM stops).</summary>
public sealed class CpuStopException(string message) : Exception(message);
