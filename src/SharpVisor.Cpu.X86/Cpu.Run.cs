using System.Runtime.CompilerServices;
using SharpVisor.Core;
using SharpVisor.Cpu.X86.Decode;
using SharpVisor.Cpu.X86.Translation;

namespace SharpVisor.Cpu.X86;

/// <summary>
/// The execution loop: fetch a decoded block for CS:RIP, run its handlers, and between blocks
/// take pending events (NMI, INIT/SIPI, external interrupts). A handler raises a guest exception by
/// throwing this vCPU's <see cref="GuestFault"/>; since RIP is only committed after a handler
/// returns, the faulting instruction's RIP is what the exception frame gets.
/// </summary>
public sealed unsafe partial class Cpu
{
    /// <summary>Set by a handler to end the current block after this instruction (mode change, SMC, STI...).</summary>
    public bool ExitBlock;
    public bool Halted;
    public bool NmiBlocked;
    bool _interruptShadow;
    bool _waitingForSipi;

    volatile bool _stopRequested;
    volatile bool _irqCheck = true;
    volatile bool _nmiPending, _initPending;
    volatile int _sipiVector = -1;
    readonly SemaphoreSlim _wake = new(0, int.MaxValue);

    /// <summary>Instructions retired since reset (blocks are counted whole).</summary>
    public long InstructionsRetired;

    /// <summary>Why the last Run returned <see cref="CpuExit.Shutdown"/>.</summary>
    public string? ShutdownReason { get; private set; }

    // ---------------------------------------------------------------- signals from other threads

    public void NotifyInterrupt() { _irqCheck = true; Wake(); }
    public void RaiseNmi() { _nmiPending = true; Wake(); }
    public void RaiseInit() { _initPending = true; Wake(); }
    public void RaiseStartup(byte vector) { _sipiVector = vector; Wake(); }
    public void RequestStop() { _stopRequested = true; Wake(); }
    public void ClearStop() => _stopRequested = false;

    void Wake() => _wake.Release();

    /// <summary>Blocks a halted vCPU until an event arrives or <paramref name="timeout"/> passes.</summary>
    public void WaitForEvent(TimeSpan timeout) => _wake.Wait(timeout);

    /// <summary>Marks the current instruction as an interrupt-shadow one (STI, MOV SS, POP SS).</summary>
    public void SetInterruptShadow()
    {
        _interruptShadow = true;
        ExitBlock = true;
    }

    /// <summary>Something may have made an interrupt deliverable (IF set, TPR lowered, EOI).</summary>
    public void RecheckInterrupts() { _irqCheck = true; ExitBlock = true; }

    /// <summary>Called when this vCPU wrote into a page holding decoded code.</summary>
    void OnCodeWritten()
    {
        Counters.CodeInvalidations.IncrementUnsynchronized();
        ExitBlock = true; // the rest of the current block may be stale
    }

    /// <summary>Runs until about <paramref name="budget"/> instructions retired or an exit condition.</summary>
    public CpuExit Run(long budget)
    {
        long start = InstructionsRetired;
        try
        {
            return RunLoop(budget, start);
        }
        finally
        {
            Counters.Instructions.Add(InstructionsRetired - start);
            Counters.ChainedTransitions.AddUnsynchronized(_chainedTransitions);
            _chainedTransitions = 0;
        }
    }

    /// <summary>The run loop's budget as an instruction count: translated code that goes on from one
    /// block to the next itself (<see cref="MayChain"/>) stops where the loop would.</summary>
    long _budgetEnd;

    /// <summary>
    /// Whether translated code may go on to the next block itself, <paramref name="retired"/>
    /// instructions after it was entered, rather than return to <see cref="RunLoop"/>: true only when
    /// the loop would do nothing but run that block — within budget, no stop request, no event that
    /// could be taken, no single-stepping, no interrupt shadow, no CS limit to check. Returning when
    /// the loop would have run the block anyway changes nothing, so the test may be conservative.
    /// An interrupt pending while IF is 0 does not end chaining: the loop would not take it either,
    /// and whatever sets IF (STI, POPF, IRET) ends its block. Not inlined: translated code calls it
    /// once per block transition, and inlining it into every loop cost the JIT ~100 us per region.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public bool MayChain(int retired) => RunLoopWouldOnlyRunNext(retired);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    bool RunLoopWouldOnlyRunNext(int retired) =>
        InstructionsRetired + retired < _budgetEnd
        && !_stopRequested && !_nmiPending && !_initPending && _sipiVector < 0 && !(_irqCheck && IF)
        && !_debugActive && !_interruptShadow && !_fetchLimitCheck && !Halted && !_waitingForSipi;

    /// <summary>
    /// Where translated code goes when block <paramref name="member"/> of <paramref name="from"/> ran
    /// to its end (a near branch), <paramref name="retired"/> instructions after the code was entered:
    /// the translation the run loop would run next, when <see cref="MayChain"/> holds and one of the
    /// block's chain cells (<see cref="CompiledRegion.Exits"/>) names it and is current — else null,
    /// and the code returns to the run loop. A cell is filled from the block's links
    /// (<see cref="NextBlock"/>), so a direct branch has its two sides there and a return or an
    /// indirect jump its last two targets, and it is trusted on the same terms as a link. Going on,
    /// the instructions retired so far are counted here, as the run loop would have counted them on
    /// return. Nothing here can fault: a successor not yet linked is left to the run loop.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public CompiledRegion? ChainFrom(CompiledRegion from, int member, int retired)
    {
        if (RunLoopWouldOnlyRunNext(retired))
        {
            ulong la = (Regs.SegBase[(int)Seg.CS] + Rip) & Regs.LinearMask;
            long epoch = _codeMapEpoch, codeWrites = Ram.CodeWrites;
            ref ChainCell cell = ref from.Exits(member);
            CompiledRegion? next =
                cell.Matches(la, epoch, codeWrites) ? cell.Target
                : Unsafe.Add(ref cell, 1).Matches(la, epoch, codeWrites) ? Unsafe.Add(ref cell, 1).Target
                : FillChainCell(from, member, la, epoch, codeWrites);
            if (next is not null)
            {
                InstructionsRetired += retired;
                ChainedRetired = 0;
                LastBlock = null; // a later early exit leaves the run loop to look its next block up
                _chainedTransitions++; // published by Run: a field of this object is in cache, the counter's is not
                return next;
            }
        }
        LastBlock = from.Blocks[member];
        return null;
    }

    /// <summary>The translation one of <paramref name="from"/>'s block <paramref name="member"/>'s
    /// current links leads to at <paramref name="la"/>, remembered in its newer cell (the older one
    /// is dropped); null when there is none to chain to.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    static CompiledRegion? FillChainCell(CompiledRegion from, int member, ulong la, long epoch, long codeWrites)
    {
        Block block = from.Blocks[member];
        Block? target = block.Link0.Linear == la && block.Link0.IsCurrent(epoch, codeWrites) ? block.Link0.Target
            : block.Link1.Linear == la && block.Link1.IsCurrent(epoch, codeWrites) ? block.Link1.Target
            : null;
        if (target?.Compiled is not { Entry: not 0, Evicted: false } next || from.Evicted)
        {
            return null;
        }
        ref ChainCell cell = ref from.Exits(member);
        Unsafe.Add(ref cell, 1) = cell;
        cell = new ChainCell { Target = next, Linear = la, MapEpoch = epoch, CodeWrites = codeWrites };
        return next;
    }

    /// <summary>Transitions <see cref="ChainFrom"/> made since <see cref="Run"/> began.</summary>
    long _chainedTransitions;

    /// <summary>
    /// The block translated code last ran to its end, which the run loop goes on from: set by the
    /// run loop before it calls translated code and by <see cref="ChainFrom"/> when it does not chain;
    /// null after a chained transition, when it is not known which block an early exit ended.
    /// </summary>
    Block? LastBlock;

    /// <summary>
    /// Instructions of the blocks a translated region has completed since it was entered; 0 outside
    /// one. When a guest exception leaves a region, the run loop adds them — it would have counted
    /// those blocks before running the faulting one itself.
    /// </summary>
    public int ChainedRetired;

    CpuExit RunLoop(long budget, long start)
    {
        _budgetEnd = start + budget;
        Block? previous = null; // the block that just ran to its end, whose successor links NextBlock tries
        while (true)
        {
            if (_stopRequested)
            {
                return CpuExit.Stopped;
            }
            if (_initPending || _sipiVector >= 0 || _nmiPending || (_irqCheck && IF && !_interruptShadow))
            {
                previous = null; // an event's handler is no block's usual successor
                if (TakeEvents() is CpuExit exit)
                {
                    return exit;
                }
            }
            if (_waitingForSipi)
            {
                return CpuExit.WaitForSipi;
            }
            if (Halted)
            {
                return CpuExit.Halted;
            }
            if (InstructionsRetired - start >= budget)
            {
                return CpuExit.BudgetExhausted;
            }
            try
            {
                if (_debugActive)
                {
                    previous = null;
                    InstructionsRetired += StepWithDebugChecks();
                    continue;
                }
                Block b = NextBlock(previous);
                previous = b;
                if (_interruptShadow)
                {
                    _interruptShadow = false;
                    previous = null;
                    InstructionsRetired += Execute(b, 1);
                }
                else if (b.Compiled is { } compiled)
                {
                    Counters.TranslatedBlockRuns.IncrementUnsynchronized();
                    long before = InstructionsRetired; // chained translations count theirs as they go
                    LastBlock = b;
                    int retired = compiled.Run(this); // not "InstructionsRetired += ...": that reads the count before the call
                    InstructionsRetired += retired;
                    Counters.TranslatedInstructions.AddUnsynchronized(InstructionsRetired - before);
                    previous = LastBlock;
                }
                else
                {
                    Counters.InterpretedBlockRuns.IncrementUnsynchronized();
                    if (_translator is { } t && ++b.Heat == t.Threshold)
                    {
                        t.Request(b);
                    }
                    InstructionsRetired += Execute(b, b.Count);
                }
            }
            catch (GuestFault f)
            {
                previous = null;
                LastBlock = null;
                InstructionsRetired += 1 + ChainedRetired;
                ChainedRetired = 0;
                ExitBlock = false;
                _heldDebugTraps = 0; // the instruction after MOV SS faulted: its held #DB goes with it
                if (!DeliverException(f.Vector, f.HasErrorCode, f.ErrorCode))
                {
                    return CpuExit.Shutdown;
                }
            }
            catch (CpuStopException e)
            {
                ChainedRetired = 0;
                LastBlock = null;
                ShutdownReason = e.Message;
                return CpuExit.Shutdown;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    int Execute(Block b, int n)
    {
        ref Op first = ref b.Ops[0];
        int i = 0;
        while (i < n)
        {
            ref Op op = ref Unsafe.Add(ref first, i);
            Regs.Gpr[RegisterFile.NextRip] = Rip + op.Len;
            op.Exec(this, ref op);
            Rip = Regs.Gpr[RegisterFile.NextRip];
            i++;
            if (ExitBlock)
            {
                ExitBlock = false;
                break;
            }
        }
        return i;
    }

    /// <summary>Takes INIT, SIPI, NMI and maskable interrupts in priority order (SDM Vol. 3A 6.9).</summary>
    CpuExit? TakeEvents()
    {
        if (_initPending)
        {
            _initPending = false;
            InitSignal();
            return _waitingForSipi ? null : CpuExit.BootstrapInit;
        }
        if (_sipiVector >= 0)
        {
            int v = Interlocked.Exchange(ref _sipiVector, -1);
            if (_waitingForSipi && v >= 0)
            {
                StartupSignal((byte)v);
            }
            return null;
        }
        if (_waitingForSipi)
        {
            return null;
        }
        if (_nmiPending && !NmiBlocked && !_interruptShadow)
        {
            _nmiPending = false;
            NmiBlocked = true;
            Halted = false;
            if (!DeliverEvent(Vector.NMI, EventKind.External, false, 0))
            {
                return CpuExit.Shutdown;
            }
            return null;
        }
        if (_irqCheck && IF && !_interruptShadow)
        {
            _irqCheck = false;
            if (Apic is { } apic && apic.HasPendingInterrupt)
            {
                byte vector = apic.AcknowledgeInterrupt();
                _irqCheck = true; // more may be pending behind this one
                Halted = false;
                Counters.Interrupts.IncrementUnsynchronized();
                if (!DeliverEvent(vector, EventKind.External, false, 0))
                {
                    return CpuExit.Shutdown;
                }
            }
        }
        return null;
    }

    /// <summary>
    /// INIT: the reset state of SDM Table 9-1, keeping what INIT leaves unchanged (x87/SSE state,
    /// TSC, TSC_ADJUST, machine-check registers); an application processor then waits for SIPI, the
    /// bootstrap processor is at the reset vector to run firmware again (SDM Vol. 3A 8.4.2).
    /// </summary>
    void InitSignal()
    {
        Reset(init: true);
        FlushTlb(includeGlobal: true);
        FlushCodeCache();
        _waitingForSipi = Index != 0;
        Halted = false;
    }

    /// <summary>SIPI: start executing in real mode at vector * 4096 (SDM Vol. 3A 9.4.4).</summary>
    void StartupSignal(byte vector)
    {
        _waitingForSipi = false;
        Segs[(int)Seg.CS] = new SegmentRegister { Selector = (ushort)(vector << 8), Base = (ulong)vector << 12, Limit = 0xFFFF, Attributes = 0x9B };
        Rip = 0;
        UpdateMode();
    }

    /// <summary>Puts an application processor in wait-for-SIPI state (as after power-on INIT).</summary>
    public void EnterWaitForSipi() => _waitingForSipi = true;

    public bool WaitingForSipi => _waitingForSipi;

    // ---------------------------------------------------------------- exceptions

    /// <summary>
    /// The exception whose delivery is under way, for the double-fault rules; <see cref="NoEvent"/>
    /// when none, <see cref="BenignEvent"/> while delivering an external interrupt or INT n / INT3 /
    /// INTO (Table 6-4 lists "all INT n" and "all INTR" as benign, whatever their vector number).
    /// </summary>
    byte _deliveringVector = NoEvent;

    const byte NoEvent = 0xFF;
    const byte BenignEvent = 0xFE;

    /// <summary>
    /// Delivers an exception raised by an instruction, applying the double-fault rules of SDM Vol. 3A
    /// 6.15 (Table 6-5). Returns false on triple fault.
    /// </summary>
    bool DeliverException(byte vector, bool hasError, uint error)
    {
        Counters.Exceptions.IncrementUnsynchronized();
        if (IsFaultClass(vector))
        {
            // The frame of a fault carries RF = 1 (delivery then clears the live flag), so that the
            // return does not hit an instruction breakpoint again (SDM Vol. 3B 18.3.1.1).
            FlagsOther |= RFlags.RF;
        }
        else if (vector == Vector.DB)
        {
            Dr[7] &= ~Dr7GD; // entering the #DB handler clears GD so it can use the debug registers (SDM 18.2.4)
        }
        return DeliverEvent(vector, EventKind.Exception, hasError, error);
    }

    internal enum EventKind { Exception, External, Software, SoftwareException }

    bool DeliverEvent(byte vector, EventKind kind, bool hasError, uint error)
    {
        byte first = _deliveringVector;
        if (first != NoEvent && kind == EventKind.Exception)
        {
            if (first == Vector.DF)
            {
                ShutdownReason = $"triple fault (exception {vector} while delivering #DF) at {Segs[1].Selector:x4}:{Rip:x}";
                return false;
            }
            bool benign = !(Vector.IsContributory(vector) || vector == Vector.PF);
            bool firstContrib = Vector.IsContributory(first);
            if (!benign && (firstContrib && Vector.IsContributory(vector) || first == Vector.PF))
            {
                vector = Vector.DF;
                hasError = true;
                error = 0;
            }
        }
        // Only an exception's own vector classifies it: `int $13` from ring 3 that meets a DPL-0 gate
        // raises #GP as a first event, never a double fault (SDM Vol. 3A 6.15, Table 6-5).
        byte delivering = kind == EventKind.Exception ? vector : BenignEvent;
        _deliveringVector = delivering;
        if (kind is EventKind.Software or EventKind.SoftwareException)
        {
            _noSingleStepTrap = true; // INT n / INT3 / INTO: no single-step trap after them (SDM 18.3.1.4)
        }
        try
        {
            Halted = false;
            DeliverThroughIdt(vector, kind, hasError, error);
            _deliveringVector = NoEvent;
            return true;
        }
        catch (GuestFault nested)
        {
            // A fault while delivering: apply the double-fault rules against the vector being delivered;
            // its frame carries RF like any fault's (a #GP from INT n through a DPL-0 gate, say).
            ExitBlock = false;
            return DeliverException(nested.Vector, nested.HasErrorCode, nested.ErrorCode);
        }
        finally
        {
            if (_deliveringVector == delivering)
            {
                _deliveringVector = NoEvent;
            }
        }
    }
}

public sealed unsafe partial class Cpu
{
    /// <summary>
    /// Executes exactly one instruction at CS:RIP. A guest exception is returned as its vector and
    /// not delivered (RIP stays at the faulting instruction) — for tests and tracing.
    /// </summary>
    /// <summary>
    /// Runs the whole block at RIP once, translated (compiled on first use, on this thread) or
    /// interpreted: what the tests compare the tiers with. Returns the exception vector it raised, if any.
    /// </summary>
    public int? RunBlockForTest(bool translated)
    {
        try
        {
            Block b = FetchBlock();
            if (translated)
            {
                b.Compiled ??= Translation.BlockCompiler.Compile(b).Code;
                _budgetEnd = 0; // this block only: translated code goes on to no other (MayChain)
                int retired = b.Compiled.Run(this);
                InstructionsRetired += retired;
            }
            else
            {
                InstructionsRetired += Execute(b, b.Count);
            }
            return null;
        }
        catch (GuestFault f)
        {
            ExitBlock = false;
            InstructionsRetired += ChainedRetired; // blocks a translated loop completed before the fault
            ChainedRetired = 0;
            return f.Vector;
        }
    }

    /// <summary>The blocks in this vCPU's block cache (for tests and benchmarks).</summary>
    public IEnumerable<Block> BlocksForTest() => _blockCache.Where(s => s.Block != null).Select(s => s.Block!);

    public int? StepForTest()
    {
        try
        {
            Block b = FetchBlock();
            InstructionsRetired += Execute(b, 1);
            ExitBlock = false;
            return null;
        }
        catch (GuestFault f)
        {
            ExitBlock = false;
            return f.Vector;
        }
    }
}
