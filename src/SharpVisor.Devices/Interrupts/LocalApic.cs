using System.Numerics;
using SharpVisor.Core;

namespace SharpVisor.Devices.Interrupts;

/// <summary>
/// One vCPU's local APIC (SDM Vol. 3A chapter 11): the xAPIC register page (an MMIO device the
/// machine maps at 0xFEE00000 per vCPU), the x2APIC MSR interface (11.12), IA32_APIC_BASE,
/// IA32_TSC_DEADLINE, interrupt acceptance and priority (IRR/ISR/TMR/TPR/PPR), IPIs through the
/// ICR, the LVT entries and the APIC timer (one-shot, periodic, TSC-deadline).
/// </summary>
/// <remarks>
/// The x2APIC ID is the vCPU index; the xAPIC ID starts as its low 8 bits (and is writable, as in
/// QEMU). The version register reads 0x00050014 (version 0x14 as on P6+/QEMU, max LVT entry 5:
/// timer, thermal, perf, LINT0, LINT1, error; no CMCI; no directed-EOI support advertised).
///
/// The timer counts at <see cref="TimerFrequencyHz"/> before the divider; the default of 1 GHz
/// matches QEMU's APIC bus and makes one count one nanosecond at divide-by-1. If the CPU reports
/// CPUID leaf 0x15, its crystal frequency (ECX) must equal this value: Linux then takes the APIC
/// timer rate from it instead of calibrating (tsc.c native_calibrate_tsc). TSC-deadline mode
/// compares against the vCPU's <see cref="TimeStampCounter"/>, the same object RDTSC reads.
///
/// Threading: every register access and <see cref="Accept"/> take this APIC's own lock; IPIs,
/// EOI broadcasts and vCPU signals are sent after it is released.
/// </remarks>
public sealed class LocalApic : IMmioDevice, IVcpuInterruptSource, IPersistent<LocalApic.State>
{
    /// <summary>The log of the VM this device belongs to.</summary>
    readonly Log Log;

    public const ulong DefaultBaseAddress = 0xFEE0_0000;
    public const ulong MmioSize = 0x1000;
    public const long DefaultTimerFrequencyHz = 1_000_000_000;

    /// <summary>Version register: version 0x14, max LVT entry 5 in bits 23:16 (SDM 11.4.8).</summary>
    public const uint VersionValue = 0x0005_0014;

    public const uint MsrApicBase = 0x1B;
    public const uint MsrTscDeadline = 0x6E0;
    public const uint MsrX2ApicFirst = 0x800;
    public const uint MsrX2ApicLast = 0x8FF;

    /// <summary>
    /// Shortest periodic-timer period. A guest programming a 1-count period would otherwise make
    /// the event loop spin; KVM clamps similarly (min_timer_period_us). Linux never asks for less.
    /// </summary>
    public const long MinPeriodicNs = 100_000;

    // IA32_APIC_BASE (SDM Vol. 3A 11.4.4, figure 11-5): bit 8 BSP, bit 10 EXTD (x2APIC), bit 11 EN.
    const ulong BaseBsp = 1UL << 8;
    const ulong BaseExtd = 1UL << 10;
    const ulong BaseEnable = 1UL << 11;

    // Register numbers: xAPIC MMIO offset >> 4 == x2APIC MSR - 0x800 (SDM tables 11-1 and 11-6).
    const int RegId = 0x02;
    const int RegVersion = 0x03;
    const int RegTpr = 0x08;
    const int RegApr = 0x09;
    const int RegPpr = 0x0A;
    const int RegEoi = 0x0B;
    const int RegRrd = 0x0C;
    const int RegLdr = 0x0D;
    const int RegDfr = 0x0E;
    const int RegSvr = 0x0F;
    const int RegIsr = 0x10;
    const int RegTmr = 0x18;
    const int RegIrr = 0x20;
    const int RegEsr = 0x28;
    const int RegIcrLow = 0x30;
    const int RegIcrHigh = 0x31;
    const int RegLvtTimer = 0x32;
    const int RegLvtError = 0x37;
    const int RegInitialCount = 0x38;
    const int RegCurrentCount = 0x39;
    const int RegDivide = 0x3E;
    const int RegSelfIpi = 0x3F;

    // LVT entries in register order 0x32..0x37 (SDM figure 11-8).
    const int LvtTimer = 0;
    const int LvtLint0 = 3;
    const int LvtLint1 = 4;
    const int LvtError = 5;
    const int LvtCount = 6;
    const uint LvtMasked = 1u << 16;

    /// <summary>Writable bits of each LVT entry (SDM figure 11-8); delivery status and remote IRR are read-only.</summary>
    static ReadOnlySpan<uint> LvtWritable =>
    [
        0x0007_00FF, // timer: vector, mask, timer mode 18:17
        0x0001_07FF, // thermal: vector, delivery mode, mask
        0x0001_07FF, // performance counter
        0x0001_A7FF, // LINT0: vector, delivery mode, polarity, trigger mode, mask
        0x0001_A7FF, // LINT1
        0x0001_00FF, // error: vector, mask
    ];

    // ESR bits (SDM figure 11-9).
    const uint EsrSendIllegalVector = 1u << 5;
    const uint EsrReceiveIllegalVector = 1u << 6;
    const uint EsrIllegalRegister = 1u << 7;

    // SVR (SDM figure 11-23): vector 7:0, APIC software enable bit 8, focus processor checking bit 9.
    const uint SvrEnable = 1u << 8;
    const uint SvrWritable = 0x3FF;

    readonly Lock _gate = new();
    readonly IApicIpiBus _bus;
    readonly IVcpuSignals _signals;
    readonly IExtIntController? _extInt;
    readonly TimeStampCounter _tsc;
    readonly TimerQueue _timers;
    readonly TimerQueue.Timer _timer;

    // Interrupt state, 256 bits each (SDM 11.8.4).
    readonly uint[] _irr = new uint[8];
    readonly uint[] _isr = new uint[8];
    readonly uint[] _tmr = new uint[8];
    readonly uint[] _lvt = new uint[LvtCount];

    ulong _apicBase;
    uint _xApicId; // xAPIC-mode ID (8 bits); starts as the vCPU index, writable like QEMU's
    volatile bool _x2Apic;
    volatile bool _enabled;
    uint _tpr;
    uint _svr;
    uint _ldr;
    uint _dfr;
    uint _esr;        // the value software reads (latched by the last ESR write)
    uint _esrPending; // errors since that write
    uint _icrLow;
    uint _icrHigh;
    uint _divideConfig;
    uint _initialCount;
    long _countStartNs;
    long _timerDeadlineNs = long.MaxValue;
    ulong _tscDeadline;
    bool _extIntMessagePending;
    readonly bool[] _lintLevel = new bool[2];
    int _pendingHint; // nonzero when IRR may hold a bit (lock-free fast path for HasPendingInterrupt)

    public readonly Counter Accepted;
    public readonly Counter IpisSent;
    public readonly Counter TimerFired;
    public readonly Counter TimerCoalesced;
    public readonly Counter GuestErrors;
    public readonly Counter Dropped;

    public LocalApic(uint id, IApicIpiBus bus, IVcpuSignals signals, TimerQueue timers, TimeStampCounter tsc,
        IExtIntController? extInt = null, long timerFrequencyHz = DefaultTimerFrequencyHz, Log? log = null)
    {
        Log = log ?? new Log();
        if (timerFrequencyHz <= 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(timerFrequencyHz), "must be positive");
        }
        Id = id;
        IsBootstrapProcessor = id == 0;
        _bus = bus;
        _signals = signals;
        _extInt = extInt;
        _timers = timers;
        _tsc = tsc;
        TimerFrequencyHz = timerFrequencyHz;
        _timer = timers.Create($"lapic{id}.timer", OnTimerExpired);
        Name = $"lapic{id}";
        Accepted = new($"lapic{id}.accepted");
        IpisSent = new($"lapic{id}.ipis_sent");
        TimerFired = new($"lapic{id}.timer_fired");
        TimerCoalesced = new($"lapic{id}.timer_coalesced");
        GuestErrors = new($"lapic{id}.guest_errors");
        Dropped = new($"lapic{id}.dropped");
        Lint0 = new LintPin(this, 0);
        Lint1 = new LintPin(this, 1);
        Reset();
    }

    public string Name { get; }

    /// <summary>This APIC's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [Accepted, IpisSent, TimerFired, TimerCoalesced, GuestErrors, Dropped];

    /// <summary>x2APIC ID (the vCPU index); the xAPIC ID is its low 8 bits.</summary>
    public uint Id { get; }

    public bool IsBootstrapProcessor { get; }

    public long TimerFrequencyHz { get; }

    /// <summary>Receives EOIs of level-triggered vectors (the IOAPIC). Set while wiring the machine.</summary>
    public IApicEoiListener? EoiListener { get; set; }

    /// <summary>The LINT0 input pin (the 8259's INTR in virtual-wire mode).</summary>
    public IIrqLine Lint0 { get; }

    /// <summary>The LINT1 input pin (NMI on PCs).</summary>
    public IIrqLine Lint1 { get; }

    public bool IsX2ApicMode => _x2Apic;

    /// <summary>IA32_APIC_BASE[11]: the APIC is globally enabled.</summary>
    public bool IsEnabled => _enabled;

    public ulong ApicBase
    {
        get
        {
            lock (_gate)
            {
                return _apicBase;
            }
        }
    }

    /// <summary>True for the MSRs this class handles (the CPU forwards them to <see cref="TryReadMsr"/>/<see cref="TryWriteMsr"/>).</summary>
    public static bool IsApicMsr(uint msr)
        => msr == MsrApicBase || msr == MsrTscDeadline || (msr >= MsrX2ApicFirst && msr <= MsrX2ApicLast);

    /// <summary>Power-on / RESET state (SDM 11.4.7.1). The BSP's LINT0 starts in ExtINT mode, unmasked,
    /// as the BIOS leaves it on a PC (virtual-wire mode; QEMU does the same), so the 8259 reaches the
    /// CPU before the kernel programs the APIC.</summary>
    public void Reset()
    {
        lock (_gate)
        {
            _apicBase = DefaultBaseAddress | BaseEnable | (IsBootstrapProcessor ? BaseBsp : 0);
            _enabled = true;
            _x2Apic = false;
            _xApicId = Id & 0xFF;
            ResetRegisters();
            if (IsBootstrapProcessor)
            {
                _lvt[LvtLint0] = (uint)ApicDeliveryMode.ExtInt << 8;
            }
        }
    }

    /// <summary>INIT / power-up register state; keeps the APIC ID and IA32_APIC_BASE (SDM 11.4.7.3).</summary>
    void ResetRegisters()
    {
        Array.Clear(_irr);
        Array.Clear(_isr);
        Array.Clear(_tmr);
        for (int i = 0; i < LvtCount; i++)
        {
            _lvt[i] = LvtMasked;
        }
        _tpr = 0;
        _svr = 0xFF;
        _ldr = 0;
        _dfr = 0xFFFF_FFFF;
        _esr = 0;
        _esrPending = 0;
        _icrLow = 0;
        _icrHigh = 0;
        _divideConfig = 0;
        _initialCount = 0;
        _tscDeadline = 0;
        _extIntMessagePending = false;
        _pendingHint = 0;
        StopTimer();
    }

    // ---------------------------------------------------------------- state as data

    /// <summary>
    /// The whole register page and the MSR-visible state. Mode (xAPIC, x2APIC, disabled) is in
    /// <see cref="ApicBase"/> (EN, EXTD). APR and PPR are computed from TPR, ISR and IRR; the
    /// timer's current count from <see cref="CountStartNs"/> and the clock.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        /// <summary>The x2APIC ID (the vCPU index): a state restores only into the APIC of the same vCPU.</summary>
        public uint ApicId { get; init; }
        /// <summary>IA32_APIC_BASE.</summary>
        public ulong ApicBase { get; init; }
        /// <summary>The xAPIC ID register's 8-bit ID (writable in xAPIC mode).</summary>
        public uint XApicId { get; init; }
        public uint Tpr { get; init; }
        public uint Svr { get; init; }
        public uint Ldr { get; init; }
        public uint Dfr { get; init; }
        /// <summary>The ESR value software reads (latched by the last ESR write).</summary>
        public uint Esr { get; init; }
        /// <summary>Errors recorded since the last ESR write.</summary>
        public uint EsrPending { get; init; }
        public uint IcrLow { get; init; }
        public uint IcrHigh { get; init; }
        /// <summary>256 bits each, vector v in word v / 32, bit v % 32.</summary>
        public uint[] Irr { get; init; } = [];
        public uint[] Isr { get; init; } = [];
        public uint[] Tmr { get; init; } = [];
        /// <summary>LVT timer, thermal, performance, LINT0, LINT1, error.</summary>
        public uint[] Lvt { get; init; } = [];
        public uint DivideConfig { get; init; }
        public uint InitialCount { get; init; }
        /// <summary>Virtual time the current count started from the initial count.</summary>
        public long CountStartNs { get; init; }
        /// <summary>Virtual time the timer fires next, or <see cref="long.MaxValue"/> when stopped.</summary>
        public long TimerDeadlineNs { get; init; }
        /// <summary>IA32_TSC_DEADLINE.</summary>
        public ulong TscDeadline { get; init; }
        /// <summary>An ExtINT message waits for the 8259 acknowledge.</summary>
        public bool ExtIntMessagePending { get; init; }
        /// <summary>The level of the LINT0 and LINT1 input pins.</summary>
        public bool[] LintLevel { get; init; } = [];
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_gate)
        {
            return new State
            {
                ApicId = Id,
                ApicBase = _apicBase,
                XApicId = _xApicId,
                Tpr = _tpr,
                Svr = _svr,
                Ldr = _ldr,
                Dfr = _dfr,
                Esr = _esr,
                EsrPending = _esrPending,
                IcrLow = _icrLow,
                IcrHigh = _icrHigh,
                Irr = (uint[])_irr.Clone(),
                Isr = (uint[])_isr.Clone(),
                Tmr = (uint[])_tmr.Clone(),
                Lvt = (uint[])_lvt.Clone(),
                DivideConfig = _divideConfig,
                InitialCount = _initialCount,
                CountStartNs = _countStartNs,
                TimerDeadlineNs = _timerDeadlineNs,
                TscDeadline = _tscDeadline,
                ExtIntMessagePending = _extIntMessagePending,
                LintLevel = (bool[])_lintLevel.Clone(),
            };
        }
    }

    /// <inheritdoc/>
    /// <remarks>Restore the local APICs before the IOAPIC and the 8259 that deliver into them (Legacy/README.md).</remarks>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Name);
        long now = _timers.Clock.NowNs;
        Check(state.ApicId == Id, $"ApicId {state.ApicId} is not this APIC's ({Id})");
        const ulong baseMask = 0x000F_FFFF_FFFF_F000;
        ulong apicBase = state.ApicBase;
        Check((apicBase & ~(baseMask | BaseBsp | BaseExtd | BaseEnable)) == 0, $"ApicBase 0x{apicBase:x} has reserved bits set");
        Check(((apicBase & BaseBsp) != 0) == IsBootstrapProcessor, $"ApicBase 0x{apicBase:x}: the BSP bit does not match vCPU {Id}");
        Check((apicBase & BaseExtd) == 0 || (apicBase & BaseEnable) != 0, $"ApicBase 0x{apicBase:x} has EXTD without EN (an invalid mode)");
        bool enabled = (apicBase & BaseEnable) != 0;
        bool x2Apic = (apicBase & BaseExtd) != 0;
        Check(state.XApicId <= 0xFF, $"XApicId {state.XApicId} is wider than 8 bits");
        Check(state.Tpr <= 0xFF, $"Tpr 0x{state.Tpr:x} is wider than 8 bits");
        Check((state.Svr & ~SvrWritable) == 0, $"Svr 0x{state.Svr:x} has bits above 9 set");
        Check((state.Ldr & 0x00FF_FFFF) == 0, $"Ldr 0x{state.Ldr:x8} has bits 23:0 set");
        Check((state.Dfr & 0x0FFF_FFFF) == 0x0FFF_FFFF, $"Dfr 0x{state.Dfr:x8}: bits 27:0 always read 1");
        const uint esrBits = EsrSendIllegalVector | EsrReceiveIllegalVector | EsrIllegalRegister;
        Check((state.Esr & ~esrBits) == 0, $"Esr 0x{state.Esr:x} has error bits this APIC never records");
        Check((state.EsrPending & ~esrBits) == 0, $"EsrPending 0x{state.EsrPending:x} has error bits this APIC never records");
        Check((state.IcrLow & ~0x000C_CFFFu) == 0, $"IcrLow 0x{state.IcrLow:x8} has read-only or reserved bits set");
        Check(x2Apic || (state.IcrHigh & 0x00FF_FFFF) == 0, $"IcrHigh 0x{state.IcrHigh:x8} has bits 23:0 set in xAPIC mode");
        CheckVectorBits(state.Irr, "Irr");
        CheckVectorBits(state.Isr, "Isr");
        CheckVectorBits(state.Tmr, "Tmr");
        Check(state.Lvt is { Length: LvtCount }, $"Lvt has {state.Lvt?.Length ?? 0} entries, this APIC has {LvtCount}");
        for (int i = 0; i < LvtCount; i++)
        {
            uint lvt = state.Lvt![i];
            Check((lvt & ~LvtWritable[i]) == 0, $"Lvt[{i}] 0x{lvt:x8} has read-only or reserved bits set");
            // No "masked while software-disabled" rule: the BSP's LINT0 starts unmasked in ExtINT mode (see Reset).
        }
        Check((state.DivideConfig & ~0xBu) == 0, $"DivideConfig 0x{state.DivideConfig:x} has bits outside 3 and 1:0");
        int timerMode = (int)(state.Lvt![LvtTimer] >> 17) & 3;
        long maxCountNs = TimeStampCounter.NsFromTicks((ulong)uint.MaxValue * 128, TimerFrequencyHz);
        Check(state.CountStartNs <= now && state.CountStartNs >= -maxCountNs, $"CountStartNs {state.CountStartNs} is not between power-on and now ({now} ns)");
        Check(timerMode != 2 || state.InitialCount == 0, "InitialCount is not 0 in TSC-deadline mode (writes to it are ignored there)");
        Check(timerMode == 2 || state.TscDeadline == 0, "TscDeadline is not 0 outside TSC-deadline mode (writes to it are ignored there)");
        long deadline = state.TimerDeadlineNs;
        if (deadline != long.MaxValue)
        {
            Check(enabled, "TimerDeadlineNs is set while the APIC is globally disabled (disabling stops the timer)");
            Check(deadline >= 0, $"TimerDeadlineNs {deadline} is before power-on");
            Check(timerMode == 2 ? state.TscDeadline != 0 : state.InitialCount != 0,
                "TimerDeadlineNs is set with no count or TSC deadline programmed");
            // A TSC deadline can be any 64-bit value, hence any time; a count is at most 2^32 * 128 ticks.
            Check(timerMode == 2 || deadline - now <= Math.Max(maxCountNs, MinPeriodicNs),
                $"TimerDeadlineNs {deadline} is further ahead than any count the guest can program");
        }
        Check(state.LintLevel is { Length: 2 }, $"LintLevel has {state.LintLevel?.Length ?? 0} entries, there are 2 LINT pins");

        bool pending;
        lock (_gate)
        {
            _apicBase = apicBase;
            _enabled = enabled;
            _x2Apic = x2Apic;
            Volatile.Write(ref _xApicId, state.XApicId);
            _tpr = state.Tpr;
            _svr = state.Svr;
            _ldr = state.Ldr;
            _dfr = state.Dfr;
            _esr = state.Esr;
            _esrPending = state.EsrPending;
            _icrLow = state.IcrLow;
            _icrHigh = state.IcrHigh;
            state.Irr!.CopyTo(_irr, 0);
            state.Isr!.CopyTo(_isr, 0);
            state.Tmr!.CopyTo(_tmr, 0);
            state.Lvt.CopyTo(_lvt, 0);
            _divideConfig = state.DivideConfig;
            _initialCount = state.InitialCount;
            _countStartNs = state.CountStartNs;
            _tscDeadline = state.TscDeadline;
            _extIntMessagePending = state.ExtIntMessagePending;
            state.LintLevel!.CopyTo(_lintLevel, 0);
            pending = HighestBit(_irr) >= 0;
            Volatile.Write(ref _pendingHint, pending ? 1 : 0);
            if (deadline == long.MaxValue)
            {
                StopTimer();
            }
            else
            {
                ArmTimer(deadline);
            }
        }
        if (pending || state.ExtIntMessagePending)
        {
            _signals.NotifyInterrupt(); // the vCPU re-checks what is pending
        }
    }

    void CheckVectorBits(uint[]? bits, string name)
    {
        Check(bits is { Length: 8 }, $"{name} has {bits?.Length ?? 0} words, 256 vectors take 8");
        Check((bits![0] & 0xFFFF) == 0, $"{name} has vectors 0-15 set (illegal for fixed delivery, never accepted)");
    }

    void Check(bool condition, string problem) => InvalidStateException.Check(condition, Name, problem);

    // ---------------------------------------------------------------- interrupt acceptance

    /// <summary>
    /// Accepts an interrupt message addressed to this APIC (from the bus, an MSI, the IOAPIC, an IPI).
    /// Fixed/lowest-priority set IRR (and TMR for level); NMI/INIT/SIPI go to the vCPU; an INIT
    /// level de-assert is ignored (SDM 11.6.1, delivery mode 101 with level 0).
    /// </summary>
    public void Accept(in ApicInterrupt interrupt)
    {
        switch (interrupt.DeliveryMode)
        {
            case ApicDeliveryMode.Fixed:
            case ApicDeliveryMode.LowestPriority:
                if (!interrupt.Assert)
                {
                    return; // de-assert half of a level message carries nothing for fixed delivery
                }
                bool notify;
                lock (_gate)
                {
                    if (!_enabled || (_svr & SvrEnable) == 0)
                    {
                        // A software-disabled APIC takes no fixed interrupts (SDM 11.4.7.2; KVM drops them too).
                        Dropped.Increment();
                        return;
                    }
                    notify = SetIrr(interrupt.Vector, interrupt.LevelTriggered);
                }
                Accepted.Increment();
                if (notify)
                {
                    _signals.NotifyInterrupt();
                }
                return;
            case ApicDeliveryMode.Nmi:
                Accepted.Increment();
                _signals.RaiseNmi();
                return;
            case ApicDeliveryMode.Init:
                if (interrupt.LevelTriggered && !interrupt.Assert)
                {
                    return; // INIT level de-assert: arbitration ID sync only, no effect (SDM 11.6.1)
                }
                lock (_gate)
                {
                    ResetRegisters();
                }
                Accepted.Increment();
                _signals.RaiseInit();
                return;
            case ApicDeliveryMode.StartUp:
                Accepted.Increment();
                _signals.RaiseStartup(interrupt.Vector);
                return;
            case ApicDeliveryMode.ExtInt:
                lock (_gate)
                {
                    _extIntMessagePending = true;
                }
                Accepted.Increment();
                _signals.NotifyInterrupt();
                return;
            default:
                Dropped.Increment();
                Log.Once("lapic.accept.dm", Name, $"delivery mode {interrupt.DeliveryMode} is not supported; message dropped");
                return;
        }
    }

    /// <summary>Sets the IRR bit of <paramref name="vector"/> (under the lock). Returns whether the vCPU should re-check.</summary>
    bool SetIrr(byte vector, bool level)
    {
        if (vector < 16)
        {
            // Vectors 0-15 are illegal for fixed delivery: receive illegal vector (SDM 11.5.3).
            return RecordError(EsrReceiveIllegalVector);
        }
        int word = vector >> 5;
        uint bit = 1u << (vector & 31);
        _irr[word] |= bit;
        if (level)
        {
            _tmr[word] |= bit;
        }
        else
        {
            _tmr[word] &= ~bit;
        }
        Volatile.Write(ref _pendingHint, 1);
        return true;
    }

    /// <summary>Notes an APIC error and raises the LVT error interrupt when unmasked (SDM 11.5.3).</summary>
    bool RecordError(uint esrBit)
    {
        GuestErrors.Increment();
        _esrPending |= esrBit;
        uint lvt = _lvt[LvtError];
        byte vector = (byte)lvt;
        if ((lvt & LvtMasked) != 0 || !_enabled || (_svr & SvrEnable) == 0)
        {
            return false;
        }
        if (vector < 16)
        {
            _esrPending |= EsrReceiveIllegalVector; // no recursion: an illegal error vector is only recorded
            return false;
        }
        return SetIrr(vector, false);
    }

    static int HighestBit(uint[] bits)
    {
        for (int i = 7; i >= 0; i--)
        {
            if (bits[i] != 0)
            {
                return (i << 5) + 31 - BitOperations.LeadingZeroCount(bits[i]);
            }
        }
        return -1;
    }

    /// <summary>Processor priority (SDM 11.8.3.1): TPR if its class is not below the in-service class.</summary>
    uint ComputePpr()
    {
        int isrv = HighestBit(_isr);
        uint isrClass = isrv < 0 ? 0 : (uint)isrv & 0xF0;
        return (_tpr & 0xF0) >= isrClass ? _tpr & 0xFF : isrClass;
    }

    /// <summary>Arbitration priority (SDM 11.6.2.4, figure 11-15 discussion).</summary>
    uint ComputeApr()
    {
        int irrv = HighestBit(_irr);
        int isrv = HighestBit(_isr);
        uint tprClass = _tpr & 0xF0;
        uint irrClass = irrv < 0 ? 0 : (uint)irrv & 0xF0;
        uint isrClass = isrv < 0 ? 0 : (uint)isrv & 0xF0;
        if (tprClass >= irrClass && tprClass >= isrClass)
        {
            return _tpr & 0xFF;
        }
        return Math.Max(tprClass, Math.Max(irrClass, isrClass));
    }

    /// <summary>Highest IRR vector that beats the processor priority, or -1 (under the lock).</summary>
    int DeliverableVector()
    {
        if (!_enabled || (_svr & SvrEnable) == 0)
        {
            return -1;
        }
        int irrv = HighestBit(_irr);
        if (irrv < 0)
        {
            Volatile.Write(ref _pendingHint, 0);
            return -1;
        }
        return ((uint)irrv & 0xF0) > (ComputePpr() & 0xF0) ? irrv : -1;
    }

    /// <summary>Whether the 8259 may supply an interrupt through this APIC: globally disabled APIC (the
    /// INTR pin goes straight to the core), LINT0 in unmasked ExtINT mode, or an ExtINT message.</summary>
    bool ExtIntRouted()
    {
        if (!_enabled)
        {
            return true;
        }
        uint lint0 = _lvt[LvtLint0];
        return _extIntMessagePending
            || ((lint0 & LvtMasked) == 0 && ((lint0 >> 8) & 7) == (uint)ApicDeliveryMode.ExtInt);
    }

    /// <inheritdoc/>
    public bool HasPendingInterrupt
    {
        get
        {
            bool ext;
            if (Volatile.Read(ref _pendingHint) == 0)
            {
                // Lock-free fast path for the per-instruction-boundary check: IRR is empty. A
                // concurrent Accept sets the hint before it notifies, so the vCPU re-checks.
                ext = ExtIntRouted();
            }
            else
            {
                lock (_gate)
                {
                    if (DeliverableVector() >= 0)
                    {
                        return true;
                    }
                    ext = ExtIntRouted();
                }
            }
            // The 8259 is asked outside our lock: it calls LINT0 (our lock) under its own.
            return ext && _extInt is { HasInterrupt: true };
        }
    }

    /// <inheritdoc/>
    public byte AcknowledgeInterrupt()
    {
        bool ext;
        byte spurious;
        lock (_gate)
        {
            int v = DeliverableVector();
            if (v >= 0)
            {
                uint bit = 1u << (v & 31);
                _irr[v >> 5] &= ~bit;
                _isr[v >> 5] |= bit;
                return (byte)v;
            }
            ext = ExtIntRouted();
            _extIntMessagePending = false;
            spurious = (byte)_svr;
        }
        if (ext && _extInt is { HasInterrupt: true } pic)
        {
            return pic.Acknowledge();
        }
        // The interrupt vanished between the check and the INTA cycle: spurious vector (SDM 11.9).
        return spurious;
    }

    // ---------------------------------------------------------------- LINT pins

    sealed class LintPin(LocalApic apic, int index) : IIrqLine
    {
        public void SetLevel(bool asserted) => apic.SetLint(index, asserted);
    }

    void SetLint(int index, bool asserted)
    {
        bool notify = false;
        bool nmi = false;
        lock (_gate)
        {
            bool rising = asserted && !_lintLevel[index];
            _lintLevel[index] = asserted;
            uint lvt = _lvt[LvtLint0 + index];
            if (!_enabled)
            {
                // Globally disabled: LINT0 is INTR, LINT1 is NMI (SDM 11.4.3).
                notify = index == 0 && asserted;
                nmi = index == 1 && rising;
            }
            else if ((lvt & LvtMasked) == 0)
            {
                switch ((ApicDeliveryMode)((lvt >> 8) & 7))
                {
                    case ApicDeliveryMode.ExtInt:
                        notify = asserted;
                        break;
                    case ApicDeliveryMode.Nmi:
                        nmi = rising;
                        break;
                    case ApicDeliveryMode.Fixed:
                        notify = rising && (_svr & SvrEnable) != 0 && SetIrr((byte)lvt, (lvt & (1u << 15)) != 0);
                        break;
                    default:
                        GuestErrors.Increment();
                        Log.Once("lapic.lint.dm", Name, $"LINT{index} delivery mode {(lvt >> 8) & 7} is not supported");
                        break;
                }
            }
        }
        if (notify)
        {
            _signals.NotifyInterrupt();
        }
        if (nmi)
        {
            _signals.RaiseNmi();
        }
    }

    // ---------------------------------------------------------------- timer

    int TimerMode => (int)(_lvt[LvtTimer] >> 17) & 3; // 0 one-shot, 1 periodic, 2 TSC-deadline (SDM table 11-2)

    /// <summary>Divide configuration (SDM figure 11-10): bits 3,1:0; 0b111 divides by 1.</summary>
    ulong Divisor
    {
        get
        {
            uint code = (_divideConfig & 3) | ((_divideConfig >> 1) & 4);
            return 1UL << (int)((code + 1) & 7);
        }
    }

    long CountNs(ulong counts) => TimeStampCounter.NsFromTicks(counts * Divisor, TimerFrequencyHz);

    long PeriodNs => Math.Max(CountNs(_initialCount), MinPeriodicNs);

    void StopTimer()
    {
        _timerDeadlineNs = long.MaxValue;
        _timer.Cancel();
    }

    void ArmTimer(long deadlineNs)
    {
        _timerDeadlineNs = deadlineNs;
        _timer.ArmAt(deadlineNs);
    }

    /// <summary>Current-count register: derived from the clock, never ticked (SDM 11.5.4).</summary>
    uint CurrentCount()
    {
        if (_initialCount == 0 || TimerMode == 2)
        {
            return 0;
        }
        long elapsedNs = _timers.Clock.NowNs - _countStartNs;
        ulong elapsed = TimeStampCounter.TicksFromNs(elapsedNs, TimerFrequencyHz) / Divisor;
        if (TimerMode == 1)
        {
            return _initialCount - (uint)(elapsed % _initialCount);
        }
        return elapsed >= _initialCount ? 0 : _initialCount - (uint)elapsed;
    }

    /// <summary>Writing the initial count (re)starts one-shot and periodic counting (SDM 11.5.4).</summary>
    void StartCount(uint initial)
    {
        if (TimerMode == 2)
        {
            return; // ignored in TSC-deadline mode (SDM 11.5.4.1)
        }
        _initialCount = initial;
        if (initial == 0)
        {
            StopTimer();
            return;
        }
        _countStartNs = _timers.Clock.NowNs;
        ArmTimer(_countStartNs + (TimerMode == 1 ? PeriodNs : CountNs(initial)));
    }

    void OnTimerExpired()
    {
        bool notify = false;
        lock (_gate)
        {
            long now = _timers.Clock.NowNs;
            if (_timerDeadlineNs == long.MaxValue || now < _timerDeadlineNs)
            {
                return; // stale: the timer was stopped or re-armed later
            }
            switch (TimerMode)
            {
                case 1 when _initialCount != 0:
                    long period = PeriodNs;
                    long late = (now - _timerDeadlineNs) / period;
                    if (late > 0)
                    {
                        TimerCoalesced.Add(late); // periods missed while the host was late fire once
                    }
                    _countStartNs = _timerDeadlineNs + late * period;
                    ArmTimer(_countStartNs + period);
                    break;
                case 2:
                    _tscDeadline = 0; // the deadline MSR reads 0 once it fired (SDM 11.5.4.1)
                    _timerDeadlineNs = long.MaxValue;
                    break;
                default:
                    _timerDeadlineNs = long.MaxValue;
                    break;
            }
            TimerFired.Increment();
            notify = FireTimerInterrupt();
        }
        if (notify)
        {
            _signals.NotifyInterrupt();
        }
    }

    bool FireTimerInterrupt()
    {
        uint lvt = _lvt[LvtTimer];
        if ((lvt & LvtMasked) != 0 || !_enabled || (_svr & SvrEnable) == 0)
        {
            return false;
        }
        return SetIrr((byte)lvt, false);
    }

    /// <summary>IA32_TSC_DEADLINE write (SDM 11.5.4.1): arms in TSC-deadline mode, 0 disarms, ignored otherwise.</summary>
    bool WriteTscDeadline(ulong value)
    {
        if (TimerMode != 2)
        {
            return false;
        }
        _tscDeadline = value;
        if (value == 0)
        {
            StopTimer();
            return false;
        }
        long now = _timers.Clock.NowNs;
        long at = _tsc.NsWhenReaches(value, now);
        if (at <= now)
        {
            // Already passed: fires at once.
            StopTimer();
            _tscDeadline = 0;
            TimerFired.Increment();
            return FireTimerInterrupt();
        }
        ArmTimer(at);
        return false;
    }

    // ---------------------------------------------------------------- register file

    /// <summary>What a register write asks to be done once the lock is released.</summary>
    struct SideEffects
    {
        public bool Notify;
        public int EoiVector; // -1: none
        public bool SendIpi;
        public IpiShorthand Shorthand;
        public ApicInterrupt Ipi;
    }

    void Perform(in SideEffects fx)
    {
        if (fx.EoiVector >= 0)
        {
            EoiListener?.OnEoi((byte)fx.EoiVector);
        }
        if (fx.SendIpi)
        {
            IpisSent.Increment();
            _bus.DeliverIpi(fx.Ipi, fx.Shorthand, this);
        }
        if (fx.Notify)
        {
            _signals.NotifyInterrupt();
        }
    }

    uint LogicalId => _x2Apic ? ((Id >> 4) << 16) | (1u << (int)(Id & 0xF)) : _ldr;

    /// <summary>Reads register <paramref name="reg"/> (under the lock); false for a register that does not exist in this mode.</summary>
    bool TryReadRegister(int reg, out ulong value)
    {
        value = 0;
        switch (reg)
        {
            case RegId:
                value = _x2Apic ? Id : _xApicId << 24;
                return true;
            case RegVersion:
                value = VersionValue;
                return true;
            case RegTpr:
                value = _tpr;
                return true;
            case RegApr when !_x2Apic:
                value = ComputeApr();
                return true;
            case RegPpr:
                value = ComputePpr();
                return true;
            case RegEoi when !_x2Apic: // write-only; reads 0 through MMIO, #GP through the MSR
            case RegRrd when !_x2Apic:
                return true;
            case RegLdr:
                value = LogicalId;
                return true;
            case RegDfr when !_x2Apic:
                value = _dfr | 0x0FFF_FFFF;
                return true;
            case RegSvr:
                value = _svr;
                return true;
            case >= RegIsr and < RegIsr + 8:
                value = _isr[reg - RegIsr];
                return true;
            case >= RegTmr and < RegTmr + 8:
                value = _tmr[reg - RegTmr];
                return true;
            case >= RegIrr and < RegIrr + 8:
                value = _irr[reg - RegIrr];
                return true;
            case RegEsr:
                value = _esr;
                return true;
            case RegIcrLow:
                // Delivery status (bit 12) reads idle: IPIs are delivered synchronously.
                value = _x2Apic ? ((ulong)_icrHigh << 32) | _icrLow : _icrLow;
                return true;
            case RegIcrHigh when !_x2Apic:
                value = _icrHigh;
                return true;
            case >= RegLvtTimer and <= RegLvtError:
                value = _lvt[reg - RegLvtTimer];
                return true;
            case RegInitialCount:
                value = _initialCount;
                return true;
            case RegCurrentCount:
                value = CurrentCount();
                return true;
            case RegDivide:
                value = _divideConfig;
                return true;
            default:
                return false;
        }
    }

    /// <summary>Writes register <paramref name="reg"/> (under the lock); false when the write is illegal (#GP in x2APIC mode).</summary>
    bool TryWriteRegister(int reg, ulong value, ref SideEffects fx)
    {
        uint v = (uint)value;
        switch (reg)
        {
            case RegId when !_x2Apic:
                // Writable on some models (SDM 11.4.6) and in QEMU; old Linux verify_local_APIC
                // checks that it is. The x2APIC ID stays the vCPU index.
                Volatile.Write(ref _xApicId, v >> 24);
                return true;
            case RegTpr:
                _tpr = v & 0xFF;
                fx.Notify = true; // a lower priority may unblock a pending interrupt
                return true;
            case RegEoi:
                if (_x2Apic && value != 0)
                {
                    return false; // non-zero EOI write in x2APIC mode raises #GP (SDM 11.12.1.2)
                }
                Eoi(ref fx);
                return true;
            case RegLdr when !_x2Apic:
                _ldr = v & 0xFF00_0000;
                return true;
            case RegDfr when !_x2Apic:
                _dfr = v | 0x0FFF_FFFF;
                return true;
            case RegSvr:
                WriteSvr(v);
                fx.Notify = true;
                return true;
            case RegEsr:
                if (_x2Apic && value != 0)
                {
                    return false; // the x2APIC ESR takes only zero (SDM 11.12.1.2)
                }
                // Write-before-read: a write latches the errors since the last write (SDM 11.5.3).
                _esr = _esrPending;
                _esrPending = 0;
                return true;
            case RegIcrLow:
                if (_x2Apic)
                {
                    _icrLow = v & 0x000C_CFFF; // delivery status does not exist in x2APIC mode
                    _icrHigh = (uint)(value >> 32);
                }
                else
                {
                    _icrLow = v & 0x000C_CFFF;
                }
                PrepareIpi(ref fx);
                return true;
            case RegIcrHigh when !_x2Apic:
                _icrHigh = v & 0xFF00_0000;
                return true;
            case >= RegLvtTimer and <= RegLvtError:
                WriteLvt(reg - RegLvtTimer, v, ref fx);
                return true;
            case RegInitialCount:
                StartCount(v);
                return true;
            case RegDivide:
                WriteDivide(v);
                return true;
            case RegSelfIpi when _x2Apic:
                if (value > 0xFF)
                {
                    return false; // bits 31:8 reserved (SDM 11.12.11)
                }
                fx.Notify |= _enabled && (_svr & SvrEnable) != 0 && SetIrr((byte)v, false);
                return true;
            default:
                return false;
        }
    }

    void Eoi(ref SideEffects fx)
    {
        int v = HighestBit(_isr);
        if (v < 0)
        {
            return; // EOI with nothing in service: no effect
        }
        uint bit = 1u << (v & 31);
        _isr[v >> 5] &= ~bit;
        if ((_tmr[v >> 5] & bit) != 0)
        {
            fx.EoiVector = v; // level-triggered: broadcast to the IOAPIC (SDM 11.8.5)
        }
        fx.Notify = Volatile.Read(ref _pendingHint) != 0;
    }

    void WriteSvr(uint v)
    {
        _svr = v & SvrWritable;
        if ((_svr & SvrEnable) == 0)
        {
            // Software disable masks every LVT entry (SDM 11.4.7.2).
            for (int i = 0; i < LvtCount; i++)
            {
                _lvt[i] |= LvtMasked;
            }
        }
    }

    void WriteLvt(int index, uint v, ref SideEffects fx)
    {
        uint value = v & LvtWritable[index];
        if ((_svr & SvrEnable) == 0)
        {
            value |= LvtMasked; // mask bits stay set while software-disabled (SDM 11.4.7.2)
        }
        if (index == LvtTimer)
        {
            int oldMode = TimerMode;
            int newMode = (int)(value >> 17) & 3;
            if (newMode == 3)
            {
                GuestErrors.Increment();
                Log.Once("lapic.timer.mode3", Name, "reserved LVT timer mode 11b written; treated as one-shot");
            }
            if ((oldMode == 2) != (newMode == 2))
            {
                // Switching into or out of TSC-deadline mode disarms the timer (SDM 11.5.4.1).
                StopTimer();
                _tscDeadline = 0;
                _initialCount = 0;
            }
        }
        _lvt[index] = value;
        fx.Notify = true; // LINT0 may have become an unmasked ExtINT path
    }

    void WriteDivide(uint v)
    {
        bool running = _initialCount != 0 && TimerMode != 2 && _timerDeadlineNs != long.MaxValue;
        uint remaining = running ? CurrentCount() : 0; // counted at the old rate
        _divideConfig = v & 0xB;
        if (running)
        {
            // Continue the remaining count at the new rate. At 0 the expiry is already due and
            // its callback will fire; re-arming would only delay it.
            if (remaining != 0)
            {
                long now = _timers.Clock.NowNs;
                _countStartNs = now - (CountNs(_initialCount) - CountNs(remaining));
                ArmTimer(now + CountNs(remaining));
            }
        }
    }

    /// <summary>Builds the IPI the ICR describes (SDM 11.6.1); the send happens after the lock.</summary>
    void PrepareIpi(ref SideEffects fx)
    {
        uint low = _icrLow;
        byte vector = (byte)low;
        var mode = (ApicDeliveryMode)((low >> 8) & 7);
        bool logical = (low & (1u << 11)) != 0;
        bool assert = (low & (1u << 14)) != 0;
        bool level = (low & (1u << 15)) != 0;
        var shorthand = (IpiShorthand)((low >> 18) & 3);
        uint destination = _x2Apic ? _icrHigh : _icrHigh >> 24;

        switch (mode)
        {
            case ApicDeliveryMode.Init when level && !assert:
                return; // INIT level de-assert (Linux sends it in wakeup_secondary_cpu_via_init): nothing to do
            case ApicDeliveryMode.Fixed or ApicDeliveryMode.LowestPriority when vector < 16:
                fx.Notify |= RecordError(EsrSendIllegalVector);
                return;
            case ApicDeliveryMode.Smi or ApicDeliveryMode.ExtInt or (ApicDeliveryMode)3:
                GuestErrors.Increment();
                Log.Once("lapic.icr.dm", Name, $"IPI with delivery mode {(int)mode} is not supported; dropped");
                return;
        }
        // Fixed IPIs are edge-triggered in effect; only the IOAPIC sets TMR through level messages.
        fx.SendIpi = true;
        fx.Shorthand = shorthand;
        fx.Ipi = new ApicInterrupt(destination, logical, mode, vector, LevelTriggered: false, Assert: true);
    }

    // ---------------------------------------------------------------- CR8

    /// <summary>MOV from CR8: TPR bits 7:4 (SDM Vol. 3A 10.8.6.1 / 11.8.6.1).</summary>
    public ulong ReadCr8()
    {
        lock (_gate)
        {
            return (_tpr >> 4) & 0xF;
        }
    }

    /// <summary>MOV to CR8: sets TPR bits 7:4 and clears 3:0. The CPU checks reserved bits (#GP) first.</summary>
    public void WriteCr8(ulong value)
    {
        lock (_gate)
        {
            _tpr = ((uint)value & 0xF) << 4;
        }
        _signals.NotifyInterrupt(); // a lower priority may unblock a pending interrupt
    }

    // ---------------------------------------------------------------- xAPIC MMIO

    /// <inheritdoc/>
    public ulong MmioRead(ulong offset, int size)
    {
        if (offset >= MmioSize)
        {
            return 0;
        }
        int reg = (int)(offset >> 4);
        int sub = (int)(offset & 0xF);
        bool notify = false;
        ulong value;
        lock (_gate)
        {
            if (!_enabled || _x2Apic)
            {
                // The MMIO page is gone when globally disabled or in x2APIC mode (SDM 11.4.3, 11.12.1.2).
                GuestErrors.Increment();
                Log.Once("lapic.mmio.off", Name, "xAPIC page accessed while disabled or in x2APIC mode; reads 0, writes ignored");
                return 0;
            }
            if (!TryReadRegister(reg, out value))
            {
                notify = RecordError(EsrIllegalRegister);
                value = 0;
            }
        }
        if (notify)
        {
            _signals.NotifyInterrupt();
        }
        // Registers are 32 bits at the start of each 16-byte slot (SDM 11.4.1); the rest reads 0.
        if (sub >= 4)
        {
            return 0;
        }
        value = (uint)value >> (sub * 8);
        return size >= 4 ? value : value & ((1UL << (size * 8)) - 1);
    }

    /// <inheritdoc/>
    public void MmioWrite(ulong offset, int size, ulong value)
    {
        if (offset >= MmioSize || (offset & 0xF) != 0 || size < 4)
        {
            // Only aligned 32-bit accesses are defined (SDM 11.4.1).
            GuestErrors.Increment();
            Log.Once("lapic.mmio.partial", Name, $"ignored {size}-byte APIC write at offset 0x{offset:x}");
            return;
        }
        var fx = new SideEffects { EoiVector = -1 };
        lock (_gate)
        {
            if (!_enabled || _x2Apic)
            {
                GuestErrors.Increment();
                Log.Once("lapic.mmio.off", Name, "xAPIC page accessed while disabled or in x2APIC mode; reads 0, writes ignored");
                return;
            }
            int reg = (int)(offset >> 4);
            bool readOnly = reg is RegVersion or RegApr or RegPpr or RegRrd or RegCurrentCount
                || reg is >= RegIsr and < RegEsr;
            if (readOnly)
            {
                GuestErrors.Increment(); // writes to read-only registers are ignored
            }
            else if (!TryWriteRegister(reg, (uint)value, ref fx))
            {
                fx.Notify |= RecordError(EsrIllegalRegister);
            }
        }
        Perform(fx);
    }

    // ---------------------------------------------------------------- MSRs

    /// <summary>RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register; false means #GP.</summary>
    public bool TryReadMsr(uint msr, out ulong value)
    {
        value = 0;
        lock (_gate)
        {
            switch (msr)
            {
                case MsrApicBase:
                    value = _apicBase;
                    return true;
                case MsrTscDeadline:
                    value = TimerMode == 2 ? _tscDeadline : 0; // reads 0 outside TSC-deadline mode
                    return true;
                case >= MsrX2ApicFirst and <= MsrX2ApicLast:
                    if (!_x2Apic)
                    {
                        return Fault(msr); // x2APIC MSRs #GP unless x2APIC mode is on (SDM 11.12.1.2)
                    }
                    int reg = (int)(msr - MsrX2ApicFirst);
                    if (reg is RegEoi or RegSelfIpi || !TryReadRegister(reg, out value))
                    {
                        value = 0;
                        return Fault(msr); // write-only or non-existent register
                    }
                    return true;
                default:
                    return Fault(msr);
            }
        }
    }

    /// <summary>WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register; false means #GP.</summary>
    public bool TryWriteMsr(uint msr, ulong value)
    {
        var fx = new SideEffects { EoiVector = -1 };
        lock (_gate)
        {
            switch (msr)
            {
                case MsrApicBase:
                    if (!WriteApicBase(value))
                    {
                        return Fault(msr);
                    }
                    break;
                case MsrTscDeadline:
                    fx.Notify = WriteTscDeadline(value);
                    break;
                case >= MsrX2ApicFirst and <= MsrX2ApicLast:
                    int reg = (int)(msr - MsrX2ApicFirst);
                    bool readOnly = reg is RegId or RegVersion or RegPpr or RegLdr or RegCurrentCount
                        || reg is >= RegIsr and < RegEsr;
                    if (!_x2Apic || readOnly || (reg != RegIcrLow && value > uint.MaxValue)
                        || !TryWriteRegister(reg, value, ref fx))
                    {
                        return Fault(msr);
                    }
                    break;
                default:
                    return Fault(msr);
            }
        }
        Perform(fx);
        return true;
    }

    bool Fault(uint msr)
    {
        GuestErrors.Increment();
        Log.Once("lapic.msr.gp", Name, $"MSR 0x{msr:x} access raises #GP (further #GPs are only counted)");
        return false;
    }

    /// <summary>
    /// IA32_APIC_BASE write (SDM 11.4.4 and 11.12.5, figure 11-27): the legal state transitions are
    /// disabled↔xAPIC, xAPIC→x2APIC and x2APIC→disabled. EXTD without EN, disabled→x2APIC,
    /// x2APIC→xAPIC and reserved bits raise #GP.
    /// </summary>
    bool WriteApicBase(ulong value)
    {
        const ulong baseMask = 0x000F_FFFF_FFFF_F000; // bits 51:12 (MAXPHYADDR 52 at most)
        if ((value & ~(baseMask | BaseBsp | BaseExtd | BaseEnable)) != 0)
        {
            return false;
        }
        bool en = (value & BaseEnable) != 0;
        bool extd = (value & BaseExtd) != 0;
        if (extd && !en)
        {
            return false; // invalid state
        }
        if (extd && !_enabled)
        {
            return false; // disabled → x2APIC must pass through xAPIC
        }
        if (_x2Apic && en && !extd)
        {
            return false; // x2APIC → xAPIC must pass through disabled
        }
        ulong newBase = value & baseMask;
        if (newBase != DefaultBaseAddress)
        {
            GuestErrors.Increment();
            Log.Once("lapic.base.move", Name, $"APIC base relocation to 0x{newBase:x} is not supported; the page stays at 0x{DefaultBaseAddress:x}");
        }
        if (en && !_enabled)
        {
            ResetRegisters(); // re-enabling starts from the power-up state (SDM 11.4.3)
            _xApicId = Id & 0xFF;
        }
        if (!en && _enabled)
        {
            StopTimer();
        }
        _apicBase = newBase | (_apicBase & BaseBsp) | (en ? BaseEnable : 0) | (extd ? BaseExtd : 0);
        _enabled = en;
        _x2Apic = extd;
        return true;
    }

    // ---------------------------------------------------------------- routing helpers for the bus

    /// <summary>
    /// Whether a message with <paramref name="destination"/> targets this APIC (SDM 11.6.2).
    /// <paramref name="shortBroadcast"/> makes 0xFF a broadcast for x2APIC-mode APICs too: an 8-bit
    /// destination (IOAPIC, compatibility MSI, xAPIC sender) uses 0xFF for "all" (as KVM does).
    /// </summary>
    internal bool MatchesDestination(uint destination, bool logical, bool shortBroadcast)
    {
        if (!_enabled)
        {
            return false;
        }
        if (_x2Apic)
        {
            if (destination == 0xFFFF_FFFF || (shortBroadcast && destination == 0xFF))
            {
                return true;
            }
            if (!logical)
            {
                return destination == Id;
            }
            // x2APIC logical: cluster in bits 31:16, one bit per member in 15:0 (SDM 11.12.10.2).
            uint ldr = LogicalId;
            return (destination >> 16) == (ldr >> 16) && (destination & ldr & 0xFFFF) != 0;
        }
        if (destination is 0xFF or 0xFFFF_FFFF)
        {
            return true;
        }
        if (!logical)
        {
            return destination == Volatile.Read(ref _xApicId);
        }
        uint mda = destination & 0xFF;
        uint id = Volatile.Read(ref _ldr) >> 24;
        if ((Volatile.Read(ref _dfr) >> 28) == 0xF)
        {
            return (mda & id) != 0; // flat model (SDM 11.6.2.2)
        }
        return (mda >> 4) == (id >> 4) && (mda & id & 0xF) != 0; // cluster model
    }

    /// <summary>Priority used by lowest-priority arbitration (the processor priority).</summary>
    internal uint ArbitrationPriority
    {
        get
        {
            lock (_gate)
            {
                return ComputePpr();
            }
        }
    }
}
