using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;

namespace SharpVisor.Cpu.X86.Translation;

/// <summary>
/// The second execution tier of one VM: blocks the interpreter has run <see cref="Threshold"/> times
/// are queued, translated on a background thread (<see cref="BlockCompiler"/>) so no vCPU waits
/// for the JIT, and then run as .NET code. The interpreter stays the first tier and the reference.
/// </summary>
/// <remarks>
/// Memory is bounded: at most <see cref="Capacity"/> blocks hold translated code; the oldest
/// translation is dropped when a new one would exceed it (its block falls back to the interpreter
/// and can become hot again). Translated code is only ever attached to a <see cref="Block"/>, which
/// the page-generation check already discards when its code is written, so self-modifying code and
/// DMA into code need nothing more here.
/// </remarks>
public sealed class Translator : IDisposable
{
    /// <summary>Interpreted runs of a block before it is queued for translation.</summary>
    public int Threshold { get; }
    /// <summary>Most blocks holding translated code at once.</summary>
    public int Capacity { get; }
    public TranslatorCounters Counters { get; } = new();

    /// <summary>Hot blocks waiting for the translator thread (under its own lock), at most <see cref="QueueCapacity"/>.</summary>
    readonly List<Block> _pending = [];
    readonly SemaphoreSlim _work = new(0);
    const int QueueCapacity = 4096;
    readonly Queue<Block> _translated = new();
    readonly Thread? _thread;
    readonly Log _log;
    volatile bool _disposed;

    /// <param name="background">False for tests: <see cref="Request"/> translates at once on the caller's thread.</param>
    /// <summary>
    /// Runs before a block is translated. RyuJIT costs about 1 us per IL byte of the method it
    /// compiles, inlined handlers included, plus ~70 us per method: ~0.5-2.5 ms for a typical
    /// 6-20 instruction block (bench: SharpVisor.Bench translate), while translated code saves some
    /// tens of ns per run of such a block. Break-even is some 10^4 runs; below that, translating
    /// costs more than it saves (measured: threshold 50 made the boot and user-space workloads
    /// slower than the interpreter; the boot's 300 hottest blocks run 93% of its instructions).
    /// </summary>
    public const int DefaultThreshold = 20_000;

    public Translator(Log log, int threshold = DefaultThreshold, int capacity = 32_768, bool background = true)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threshold, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _log = log;
        Threshold = threshold;
        Capacity = capacity;
        if (background)
        {
            _thread = new Thread(TranslateLoop) { IsBackground = true, Name = "translator", Priority = ThreadPriority.BelowNormal };
            _thread.Start();
        }
    }

    /// <summary>Called by a vCPU when <paramref name="block"/> became hot. Never blocks.</summary>
    public void Request(Block block)
    {
        if (_thread is null)
        {
            Translate(block);
            return;
        }
        lock (_pending)
        {
            if (_pending.Count >= QueueCapacity)
            {
                Counters.QueueFull.IncrementUnsynchronized(); // it stays interpreted and is asked for again when hot again
                block.Heat = 0;
                return;
            }
            _pending.Add(block);
        }
        _work.Release();
    }

    void TranslateLoop()
    {
        while (true)
        {
            _work.Wait();
            if (_disposed)
            {
                return;
            }
            Translate(TakeHottest());
        }
    }

    /// <summary>
    /// The waiting block that has run most often: a block's heat goes on counting its interpreted runs
    /// while it waits, so when more blocks become hot than the JIT keeps up with (a boot, a program
    /// starting), the busiest code is translated first instead of in the order blocks crossed the
    /// threshold. One pass over the queue is nothing beside the ~1 ms a translation costs.
    /// </summary>
    Block TakeHottest()
    {
        lock (_pending)
        {
            int best = 0;
            for (int i = 1; i < _pending.Count; i++)
            {
                if (_pending[i].Heat > _pending[best].Heat)
                {
                    best = i;
                }
            }
            Block block = _pending[best];
            _pending[best] = _pending[^1];
            _pending.RemoveAt(_pending.Count - 1);
            return block;
        }
    }

    void Translate(Block block)
    {
        long start = Stopwatch.GetTimestamp();
        long startCpu = ThreadCpuTime.Nanoseconds();
        BlockCompiler.Result result;
        try
        {
            result = BlockCompiler.Compile(RegionBuilder.Select(block));
        }
        catch (Exception e)
        {
            // A translator bug must not stop the guest (an exception escaping this thread would end
            // the process): the block stays with the interpreter, which is always correct.
            Counters.Failures.Increment();
            _log.Once("translator.failure", "translator", $"a block could not be translated and stays interpreted: {e.Message}");
            return;
        }
        Counters.CompileMicroseconds.Add((long)Stopwatch.GetElapsedTime(start).TotalMicroseconds);
        Counters.CompileCpuMicroseconds.Add((ThreadCpuTime.Nanoseconds() - startCpu) / 1000);
        Counters.BlocksTranslated.Increment();
        Counters.IlBytes.Add(result.IlBytes);
        Counters.PointerCalls.Add(result.CalledThroughPointer);
        Counters.RegionBlocks.Add(result.Blocks);
        if (result.Chained)
        {
            Counters.ChainedRegions.Increment();
        }
        lock (_translated)
        {
            if (_translated.Count >= Capacity)
            {
                var evicted = _translated.Dequeue();
                evicted.Compiled?.Evict();
                Volatile.Write(ref evicted.Compiled, null);
                evicted.Heat = 0; // counted again by its vCPU (a racing increment is harmless), so it can become hot again
                Counters.Evictions.Increment();
            }
            _translated.Enqueue(block);
        }
        Volatile.Write(ref block.Compiled, result.Code);
    }

    public void Dispose()
    {
        _disposed = true;
        _work.Release(); // the thread wakes, sees the flag and ends
    }
}

/// <summary>What the translator did, for <c>--stats</c>.</summary>
public sealed class TranslatorCounters
{
    public readonly Counter BlocksTranslated = new("translator.blocks_translated");
    /// <summary>Time spent translating (emitting IL and the JIT compiling it), in microseconds of the
    /// translator thread's wall clock and of its CPU time (the difference: waiting for a core).</summary>
    public readonly Counter CompileMicroseconds = new("translator.compile_us");
    public readonly Counter CompileCpuMicroseconds = new("translator.compile_cpu_us");
    public readonly Counter IlBytes = new("translator.il_bytes");
    /// <summary>Instructions whose handler translated code calls through its pointer (not inlinable).</summary>
    public readonly Counter PointerCalls = new("translator.pointer_calls");
    /// <summary>Blocks in all translations: each is a region of one or more blocks (see <see cref="RegionBuilder"/>).</summary>
    public readonly Counter RegionBlocks = new("translator.region_blocks");
    /// <summary>Translations that go on from block to block themselves (a loop within a page).</summary>
    public readonly Counter ChainedRegions = new("translator.chained_regions");
    /// <summary>Translations dropped to stay within the capacity.</summary>
    public readonly Counter Evictions = new("translator.evictions");
    /// <summary>Hot blocks not queued because the queue was full.</summary>
    public readonly Counter QueueFull = new("translator.queue_full");
    public readonly Counter Failures = new("translator.failures");

    public IEnumerable<Counter> All => [BlocksTranslated, CompileMicroseconds, CompileCpuMicroseconds, IlBytes, PointerCalls, RegionBlocks, ChainedRegions, Evictions, QueueFull, Failures];
}
