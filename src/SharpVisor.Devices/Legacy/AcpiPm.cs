using SharpVisor.Core;

namespace SharpVisor.Devices.Legacy;

/// <summary>
/// The ACPI power-management I/O block of the ICH9 LPC bridge (ICH9 datasheet 13.8.3, "ACPI and
/// legacy I/O registers" at PMBASE; QEMU's q35 puts PMBASE at 0x600). Register it as
/// <see cref="BlockSize"/> ports at the base the FADT advertises:
/// <list type="bullet">
/// <item>PM1a_EVT_BLK = base + 0x00 (4 bytes: PM1_STS, PM1_EN)</item>
/// <item>PM1a_CNT_BLK = base + 0x04 (2 bytes used: SCI_EN, SLP_TYP, SLP_EN)</item>
/// <item>PM_TMR_BLK = base + 0x08 (4 bytes), 24-bit (<see cref="TimerIs32Bit"/> is false, so the
/// FADT must leave TMR_VAL_EXT clear)</item>
/// <item>GPE0_BLK = base + 0x20, 16 bytes (8 status + 8 enable): no GPE source exists, status reads zero.</item>
/// </list>
/// The SCI (GSI 9 on a PC) is asserted while SCI_EN is set and an enabled status bit is set.
/// Writing SLP_EN with SLP_TYP = <see cref="S5SleepType"/> calls the power-off callback, so the
/// DSDT's \_S5 package must carry that value. Other sleep types are not implemented: the guest
/// is woken at once (WAK_STS set) so its wait loop ends, and the attempt is counted and logged.
/// </summary>
public sealed class AcpiPm : IPortDevice, IPersistent<AcpiPm.State>
{
    /// <summary>The log of the VM this device belongs to.</summary>
    readonly Log Log;

    public const int BlockSize = 0x80;
    public const long TimerHz = 3_579_545;

    // Offsets within the block (ICH9 datasheet table 13-10).
    const int Pm1Sts = 0x00;
    const int Pm1En = 0x02;
    const int Pm1Cnt = 0x04;
    const int Pm1Tmr = 0x08;
    const int Gpe0Sts = 0x20;
    const int Gpe0En = 0x28;
    const int Gpe0End = 0x30;

    // PM1_STS / PM1_EN bits (ACPI 6.5 tables 4.16/4.17).
    const ushort TmrSts = 1 << 0;
    const ushort BmSts = 1 << 4;
    const ushort GblSts = 1 << 5;
    const ushort PwrBtnSts = 1 << 8;
    const ushort RtcSts = 1 << 10;
    const ushort WakSts = 1 << 15;
    const ushort SciEventMask = TmrSts | GblSts | PwrBtnSts | RtcSts;

    // PM1_CNT bits (ACPI 6.5 table 4.18).
    const ushort SciEn = 1 << 0;
    const ushort SlpTypShift = 10;
    const ushort SlpTypMask = 7 << SlpTypShift;
    const ushort SlpEn = 1 << 13;
    const ushort Pm1CntWritable = SciEn | (1 << 1) | (1 << 2) | SlpTypMask;

    readonly Lock _lock = new();
    readonly VirtualClock _clock;
    readonly IIrqLine _sci;
    readonly Action _powerOff;
    readonly DeviceTimer _tmrOverflow;
    readonly bool _sciEnabledAtReset;

    ushort _pm1Sts;
    ushort _pm1En;
    ushort _pm1Cnt;
    long _tmrEpoch; // value of ticks >> 23 when TMR_STS was last cleared
    readonly byte[] _gpe0En = new byte[8];
    bool _sciLevel;

    public readonly Counter UnknownRegisterAccesses = new("acpi_pm.unknown_register_accesses");
    public readonly Counter UnsupportedSleepRequests = new("acpi_pm.unsupported_sleep_requests");
    public readonly Counter PowerOffs = new("acpi_pm.power_offs");

    /// <summary>This device's counters, for the machine's <see cref="CounterRegistry"/>.</summary>
    public IEnumerable<Counter> Counters => [UnknownRegisterAccesses, UnsupportedSleepRequests, PowerOffs];

    /// <param name="timers">Arms the PM timer's TMR_STS overflow event when TMR_EN is set.</param>
    /// <param name="sci">The SCI line (GSI 9 on a PC, level-triggered).</param>
    /// <param name="powerOff">Called (outside the device lock) when the guest enters S5.</param>
    /// <param name="s5SleepType">The SLP_TYP value of \_S5; 7 is the ICH9 encoding ("111 = Soft Off").</param>
    /// <param name="sciEnabledAtReset">Start in ACPI mode (SCI_EN = 1), for a FADT whose SMI_CMD is 0 (no legacy-to-ACPI hand-over).</param>
    public AcpiPm(TimerQueue timers, IIrqLine sci, Action powerOff, int s5SleepType = 7, bool sciEnabledAtReset = true, Log? log = null)
    {
        Log = log ?? new Log();
        if (s5SleepType is < 0 or > 7)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(s5SleepType), "SLP_TYP is a 3-bit field");
        }
        _clock = timers.Clock;
        _sci = sci;
        _powerOff = powerOff;
        S5SleepType = s5SleepType;
        _sciEnabledAtReset = sciEnabledAtReset;
        _tmrOverflow = new DeviceTimer(timers, "acpi-pm-timer-overflow", OnTimerOverflow);
        Reset();
    }

    public string Name => "acpi-pm";

    /// <summary>The PM timer is 24 bits wide, as on ICH9 (FADT flag TMR_VAL_EXT must be 0).</summary>
    public bool TimerIs32Bit => false;

    /// <summary>SLP_TYP value that means S5 (soft off); the DSDT's \_S5 object must match.</summary>
    public int S5SleepType { get; }

    /// <summary>Returns the block to its power-on state (machine reset).</summary>
    public void Reset()
    {
        lock (_lock)
        {
            _pm1Sts = 0;
            _pm1En = 0;
            _pm1Cnt = _sciEnabledAtReset ? SciEn : (ushort)0;
            _tmrEpoch = Ticks() >> 23;
            Array.Clear(_gpe0En);
            UpdateSci();
        }
    }

    /// <summary>
    /// The PM1 and GPE0 registers, the PM timer's overflow epoch and the SCI. The SCI level is
    /// kept because TMR_STS rises with the clock and reaches the SCI only when the overflow timer
    /// runs; a level recomputed on restore could come early.
    /// </summary>
    public sealed record State
    {
        public const int CurrentVersion = 1;
        public int Version { get; init; } = CurrentVersion;
        /// <summary>PM1_STS bits other than TMR_STS (which derives from <see cref="TimerEpoch"/>).</summary>
        public ushort Pm1Status { get; init; }
        public ushort Pm1Enable { get; init; }
        public ushort Pm1Control { get; init; }
        /// <summary>PM timer ticks &gt;&gt; 23 when TMR_STS was last cleared.</summary>
        public long TimerEpoch { get; init; }
        public byte[] Gpe0Enable { get; init; } = [];
        public bool SciAsserted { get; init; }
        /// <summary>Virtual time of the pending overflow timer callback, or -1.</summary>
        public long OverflowTimerDeadlineNs { get; init; }
    }

    /// <inheritdoc/>
    public State SaveState()
    {
        lock (_lock)
        {
            return new State
            {
                Pm1Status = _pm1Sts,
                Pm1Enable = _pm1En,
                Pm1Control = _pm1Cnt,
                TimerEpoch = _tmrEpoch,
                Gpe0Enable = (byte[])_gpe0En.Clone(),
                SciAsserted = _sciLevel,
                OverflowTimerDeadlineNs = _tmrOverflow.DeadlineNs,
            };
        }
    }

    /// <inheritdoc/>
    public void RestoreState(State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        InvalidStateException.CheckVersion(state.Version, State.CurrentVersion, Name);
        long ticks = Ticks();
        Check((state.Pm1Status & ~(BmSts | GblSts | PwrBtnSts | RtcSts | WakSts)) == 0,
            $"Pm1Status 0x{state.Pm1Status:x4} has bits no event sets (TMR_STS derives from TimerEpoch)");
        Check((state.Pm1Enable & ~(TmrSts | GblSts | PwrBtnSts | RtcSts)) == 0, $"Pm1Enable 0x{state.Pm1Enable:x4} has bits that are not writable");
        Check((state.Pm1Control & ~Pm1CntWritable) == 0, $"Pm1Control 0x{state.Pm1Control:x4} has bits that are not writable (SLP_EN is write-only)");
        Check(state.TimerEpoch >= 0 && state.TimerEpoch <= ticks >> 23, $"TimerEpoch {state.TimerEpoch} is not between power-on and now ({ticks >> 23})");
        Check(state.Gpe0Enable is { Length: 8 }, $"Gpe0Enable has {state.Gpe0Enable?.Length ?? 0} bytes, GPE0_EN has 8");
        Check(!state.SciAsserted || (state.Pm1Control & SciEn) != 0, "SciAsserted while SCI_EN is clear");
        Check(DeviceTimer.IsValidDeadline(state.OverflowTimerDeadlineNs), $"OverflowTimerDeadlineNs {state.OverflowTimerDeadlineNs} is before power-on");

        lock (_lock)
        {
            _pm1Sts = state.Pm1Status;
            _pm1En = state.Pm1Enable;
            _pm1Cnt = state.Pm1Control;
            _tmrEpoch = state.TimerEpoch;
            state.Gpe0Enable!.CopyTo(_gpe0En, 0);
            if (state.SciAsserted != _sciLevel)
            {
                _sciLevel = state.SciAsserted;
                _sci.SetLevel(_sciLevel);
            }
            _tmrOverflow.Restore(state.OverflowTimerDeadlineNs);
        }
    }

    void Check(bool condition, string problem) => InvalidStateException.Check(condition, Name, problem);

    /// <summary>The PM timer value now: 3.579545 MHz ticks of the virtual clock, 24 bits.</summary>
    public uint TimerValue => (uint)(Ticks() & 0xFF_FFFF);

    /// <summary>Presses the power button (PWRBTN_STS): an ACPI guest shuts down when it has enabled PWRBTN_EN.</summary>
    public void PressPowerButton()
    {
        lock (_lock)
        {
            _pm1Sts |= PwrBtnSts;
            UpdateSci();
        }
    }

    long Ticks() => ClockMath.NsToTicks(_clock.NowNs, TimerHz);

    ushort Pm1StatusNow(long ticks)
    {
        ushort sts = _pm1Sts;
        // TMR_STS is set whenever bit 23 of the counter toggles (ACPI 6.5 section 4.8.2.1).
        if ((ticks >> 23) != _tmrEpoch)
        {
            sts |= TmrSts;
        }
        return sts;
    }

    public uint PortRead(ushort offset, int size)
    {
        lock (_lock)
        {
            long ticks = Ticks();
            uint value = 0;
            for (int i = 0; i < size; i++)
            {
                value |= (uint)ReadByte(offset + i, ticks) << (8 * i);
            }
            return value;
        }
    }

    byte ReadByte(int offset, long ticks)
    {
        switch (offset)
        {
            case Pm1Sts: return (byte)Pm1StatusNow(ticks);
            case Pm1Sts + 1: return (byte)(Pm1StatusNow(ticks) >> 8);
            case Pm1En: return (byte)_pm1En;
            case Pm1En + 1: return (byte)(_pm1En >> 8);
            case Pm1Cnt: return (byte)_pm1Cnt;
            case Pm1Cnt + 1: return (byte)(_pm1Cnt >> 8); // SLP_EN is write-only and reads 0
            case Pm1Cnt + 2 or Pm1Cnt + 3: return 0;
            case >= Pm1Tmr and < Pm1Tmr + 4: return (byte)((ticks & 0xFF_FFFF) >> (8 * (offset - Pm1Tmr)));
            case >= Gpe0Sts and < Gpe0En: return 0; // no general-purpose event source exists
            case >= Gpe0En and < Gpe0End: return _gpe0En[offset - Gpe0En];
            default:
                UnknownRegisterAccesses.Increment();
                Log.Once("acpi_pm.unknown_read", "acpi-pm", $"read of unimplemented PM register at offset 0x{offset:x} (reads 0)");
                return 0;
        }
    }

    public void PortWrite(ushort offset, int size, uint value)
    {
        bool powerOff = false;
        lock (_lock)
        {
            long ticks = Ticks();
            for (int i = 0; i < size; i++)
            {
                WriteByte(offset + i, (byte)(value >> (8 * i)), ticks);
            }
            // SLP_EN lives in byte 1 of PM1_CNT; act on it once the whole access is applied.
            bool slpEnWritten = offset <= Pm1Cnt + 1 && offset + size > Pm1Cnt + 1
                && (value >> (8 * (Pm1Cnt + 1 - offset)) & (SlpEn >> 8)) != 0;
            if (slpEnWritten)
            {
                int type = (_pm1Cnt & SlpTypMask) >> SlpTypShift;
                if (type == S5SleepType)
                {
                    powerOff = true;
                }
                else
                {
                    UnsupportedSleepRequests.Increment();
                    Log.Once("acpi_pm.sleep", "acpi-pm", $"guest requested sleep type {type}; only S5 (type {S5SleepType}) is implemented, waking at once");
                    _pm1Sts |= WakSts;
                }
            }
            UpdateSci();
            ArmOverflowTimer(ticks);
        }
        if (powerOff)
        {
            PowerOffs.Increment();
            _powerOff();
        }
    }

    void WriteByte(int offset, byte b, long ticks)
    {
        switch (offset)
        {
            case Pm1Sts:
                // Write-1-to-clear (ACPI 6.5 section 4.8.3.1.1).
                if ((b & TmrSts) != 0)
                {
                    _tmrEpoch = ticks >> 23;
                }
                _pm1Sts &= (ushort)~(b & (BmSts | GblSts));
                break;
            case Pm1Sts + 1:
                _pm1Sts &= (ushort)~((b << 8) & (PwrBtnSts | RtcSts | WakSts));
                break;
            case Pm1En:
                _pm1En = (ushort)((_pm1En & 0xFF00) | (b & (TmrSts | GblSts)));
                break;
            case Pm1En + 1:
                _pm1En = (ushort)((_pm1En & 0x00FF) | ((b << 8) & (PwrBtnSts | RtcSts)));
                break;
            case Pm1Cnt:
                _pm1Cnt = (ushort)((_pm1Cnt & 0xFF00) | (b & Pm1CntWritable));
                break;
            case Pm1Cnt + 1:
                _pm1Cnt = (ushort)((_pm1Cnt & 0x00FF) | ((b << 8) & Pm1CntWritable));
                break;
            case Pm1Cnt + 2 or Pm1Cnt + 3:
                break;
            case >= Pm1Tmr and < Pm1Tmr + 4:
                UnknownRegisterAccesses.Increment(); // PM_TMR is read-only
                break;
            case >= Gpe0Sts and < Gpe0En:
                break; // write-1-to-clear of bits that are never set
            case >= Gpe0En and < Gpe0End:
                _gpe0En[offset - Gpe0En] = b;
                break;
            default:
                UnknownRegisterAccesses.Increment();
                Log.Once("acpi_pm.unknown_write", "acpi-pm", $"write to unimplemented PM register at offset 0x{offset:x} (ignored)");
                break;
        }
    }

    void ArmOverflowTimer(long ticks)
    {
        // Only needed when TMR_STS can raise the SCI and is not already pending.
        if ((_pm1En & TmrSts) != 0 && (Pm1StatusNow(ticks) & TmrSts) == 0)
        {
            long nextToggle = ((ticks >> 23) + 1) << 23;
            _tmrOverflow.EnsureBy(ClockMath.TicksToNs(nextToggle, TimerHz));
        }
    }

    void OnTimerOverflow()
    {
        lock (_lock)
        {
            UpdateSci();
            ArmOverflowTimer(Ticks());
        }
    }

    // Drives the SCI under the device lock so level changes reach the interrupt controller in
    // order; interrupt controllers never call back into this device.
    void UpdateSci()
    {
        bool level = (_pm1Cnt & SciEn) != 0 && (Pm1StatusNow(Ticks()) & _pm1En & SciEventMask) != 0;
        if (level != _sciLevel)
        {
            _sciLevel = level;
            _sci.SetLevel(level);
        }
    }
}
