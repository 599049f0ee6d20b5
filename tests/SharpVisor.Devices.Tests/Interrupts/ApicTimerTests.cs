using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;
using static SharpVisor.Devices.Tests.Interrupts.ApicTestBoard;

namespace SharpVisor.Devices.Tests.Interrupts;

public class ApicTimerTests
{
    const uint Periodic = 1 << 17;
    const uint TscDeadline = 2 << 17;
    const uint Masked = 1 << 16;
    const byte Vector = 0xEC; // Linux's LOCAL_TIMER_VECTOR

    static LocalApic EnabledApic(ApicTestBoard board)
    {
        var apic = board.Apics[0];
        SoftwareEnable(apic);
        return apic;
    }

    [Fact]
    public void OneShotFiresOnceAtTheProgrammedTime()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.Divide, 4, 0x3); // divide by 16
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 1000); // 1000 * 16 counts at 1 GHz = 16 µs

        board.RunUntil(8_000);
        Assert.Equal(500u, Read(apic, ApicRegs.CurrentCount));
        Assert.False(IrrHas(apic, Vector));
        board.RunUntil(15_999);
        Assert.False(IrrHas(apic, Vector));
        board.RunUntil(16_000);
        Assert.True(IrrHas(apic, Vector));
        Assert.Equal(0u, Read(apic, ApicRegs.CurrentCount));

        Assert.Equal(Vector, apic.AcknowledgeInterrupt());
        apic.MmioWrite(ApicRegs.Eoi, 4, 0);
        board.RunUntil(100_000);
        Assert.False(IrrHas(apic, Vector));
        Assert.Equal(1, apic.TimerFired.Value);
    }

    [Fact]
    public void DivideByOneAndRestartOnInitialCountWrite()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.Divide, 4, 0xB); // divide by 1
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 1000);
        board.RunUntil(900);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 1000); // re-arm at 1900
        board.RunUntil(1_000);
        Assert.False(IrrHas(apic, Vector));
        board.RunUntil(1_900);
        Assert.True(IrrHas(apic, Vector));
    }

    [Fact]
    public void DivideChangeMidCountContinuesAtTheNewRate()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.Divide, 4, 0xB); // divide by 1
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 1000);
        board.RunUntil(500);
        apic.MmioWrite(ApicRegs.Divide, 4, 0x0); // divide by 2: 500 counts left take 1000 ns
        Assert.Equal(500u, Read(apic, ApicRegs.CurrentCount));
        board.RunUntil(1_499);
        Assert.False(IrrHas(apic, Vector));
        board.RunUntil(1_500);
        Assert.True(IrrHas(apic, Vector));
        Assert.Equal(1, apic.TimerFired.Value);
    }

    [Fact]
    public void ZeroInitialCountStopsTheTimer()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 1000);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 0);
        board.RunUntil(1_000_000);
        Assert.False(IrrHas(apic, Vector));
    }

    [Fact]
    public void PeriodicFiresEveryPeriodAndCountsDownRepeatedly()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.Divide, 4, 0xB);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Periodic | Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 200_000); // 200 µs
        for (int k = 1; k <= 3; k++)
        {
            board.RunUntil(k * 200_000L - 1);
            Assert.False(IrrHas(apic, Vector));
            board.RunUntil(k * 200_000L);
            Assert.True(IrrHas(apic, Vector));
            Assert.Equal(Vector, apic.AcknowledgeInterrupt());
            apic.MmioWrite(ApicRegs.Eoi, 4, 0);
        }
        board.RunUntil(3 * 200_000L + 50_000);
        Assert.Equal(150_000u, Read(apic, ApicRegs.CurrentCount));
        Assert.Equal(3, apic.TimerFired.Value);
    }

    [Fact]
    public void PeriodicMissedPeriodsCoalesceAndStayOnTheGrid()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.Divide, 4, 0xB);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Periodic | Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 200_000);
        board.RunUntil(750_000); // periods at 200, 400, 600 µs passed
        Assert.Equal(1, apic.TimerFired.Value);
        Assert.Equal(2, apic.TimerCoalesced.Value);
        board.RunUntil(799_999);
        Assert.Equal(1, apic.TimerFired.Value);
        board.RunUntil(800_000);
        Assert.Equal(2, apic.TimerFired.Value);
    }

    [Fact]
    public void TinyPeriodicPeriodIsClampedSoTheHostCannotBeFlooded()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.Divide, 4, 0xB);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Periodic | Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 1); // 1 ns
        board.RunUntil(LocalApic.MinPeriodicNs - 1);
        Assert.Equal(0, apic.TimerFired.Value);
        board.RunUntil(LocalApic.MinPeriodicNs);
        Assert.Equal(1, apic.TimerFired.Value);
        board.RunUntil(2 * LocalApic.MinPeriodicNs - 1);
        Assert.Equal(1, apic.TimerFired.Value);
        board.RunUntil(2 * LocalApic.MinPeriodicNs);
        Assert.Equal(2, apic.TimerFired.Value);
    }

    [Fact]
    public void MaskedTimerCountsButDoesNotInterrupt()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Masked | Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 100);
        board.RunUntil(10_000);
        Assert.Equal(1, apic.TimerFired.Value);
        Assert.False(IrrHas(apic, Vector));
    }

    [Fact]
    public void TscDeadlineFiresWhenTheTscReachesTheDeadline()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        var tsc = board.Tsc[0];
        apic.MmioWrite(ApicRegs.LvtTimer, 4, TscDeadline | Vector);
        board.RunUntil(1_000);
        ulong deadline = tsc.Read() + 5_000; // 2 GHz TSC: 2.5 µs
        Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, deadline));
        Assert.True(apic.TryReadMsr(LocalApic.MsrTscDeadline, out ulong armed));
        Assert.Equal(deadline, armed);
        board.RunUntil(3_499);
        Assert.False(IrrHas(apic, Vector));
        board.RunUntil(3_500);
        Assert.True(IrrHas(apic, Vector));
        Assert.True(tsc.Read() >= deadline);
        Assert.True(apic.TryReadMsr(LocalApic.MsrTscDeadline, out ulong after));
        Assert.Equal(0UL, after); // cleared once fired
    }

    [Fact]
    public void TscDeadlineFollowsAGuestWrittenTsc()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        var tsc = board.Tsc[0];
        apic.MmioWrite(ApicRegs.LvtTimer, 4, TscDeadline | Vector);
        tsc.Write(1_000_000_000); // WRMSR IA32_TSC
        Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, 1_000_002_000));
        board.RunUntil(999);
        Assert.False(IrrHas(apic, Vector));
        board.RunUntil(1_000);
        Assert.True(IrrHas(apic, Vector));
    }

    [Fact]
    public void TscDeadlineInThePastFiresAtOnceAndZeroDisarms()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, TscDeadline | Vector);
        board.RunUntil(10_000);
        Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, 1));
        Assert.True(IrrHas(apic, Vector));
        Assert.True(board.Signals[0].Notifications > 0);
        apic.AcknowledgeInterrupt();
        apic.MmioWrite(ApicRegs.Eoi, 4, 0);

        Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, board.Tsc[0].Read() + 100));
        Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, 0));
        board.RunUntil(1_000_000);
        Assert.False(IrrHas(apic, Vector));
    }

    [Fact]
    public void TscDeadlineMsrIsInertOutsideDeadlineModeAndModeSwitchDisarms()
    {
        var board = new ApicTestBoard(1);
        var apic = EnabledApic(board);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Vector); // one-shot
        Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, 5_000));
        Assert.True(apic.TryReadMsr(LocalApic.MsrTscDeadline, out ulong v));
        Assert.Equal(0UL, v);
        board.RunUntil(100_000);
        Assert.False(IrrHas(apic, Vector));

        apic.MmioWrite(ApicRegs.LvtTimer, 4, TscDeadline | Vector);
        Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, board.Tsc[0].Read() + 1_000));
        apic.MmioWrite(ApicRegs.InitialCount, 4, 10); // ignored in deadline mode
        Assert.Equal(0u, Read(apic, ApicRegs.InitialCount));
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Vector); // back to one-shot: disarms the deadline
        board.RunUntil(200_000);
        Assert.False(IrrHas(apic, Vector));
    }

    [Fact]
    public void TscConversionsRoundTrip()
    {
        Assert.Equal(3_000UL, TimeStampCounter.TicksFromNs(1_000, 3_000_000_000));
        Assert.Equal(1_000L, TimeStampCounter.NsFromTicks(3_000, 3_000_000_000));
        Assert.Equal(1L, TimeStampCounter.NsFromTicks(1, 3_000_000_000)); // rounds up: never fire early
        // No overflow for a year of guest time at 4 GHz.
        long year = 365L * 24 * 3600 * 1_000_000_000;
        Assert.Equal((ulong)year * 4, TimeStampCounter.TicksFromNs(year, 4_000_000_000));
    }

    [Fact]
    public void TimerFollowsTheInstructionDrivenClock()
    {
        var clock = new VirtualClock(ClockMode.Deterministic, instructionsPerMicrosecond: 100);
        var timers = new TimerQueue(clock);
        var bus = new ApicBus();
        var apic = new LocalApic(0, bus, new RecordingSignals(), timers, new TimeStampCounter(clock, 1_000_000_000));
        bus.Attach(apic);
        SoftwareEnable(apic);
        apic.MmioWrite(ApicRegs.Divide, 4, 0xB);
        apic.MmioWrite(ApicRegs.LvtTimer, 4, Vector);
        apic.MmioWrite(ApicRegs.InitialCount, 4, 10_000); // 10 µs = 1000 instructions
        clock.AdvanceByInstructions(999);
        timers.RunExpired();
        Assert.False(IrrHas(apic, Vector));
        clock.AdvanceByInstructions(1);
        timers.RunExpired();
        Assert.True(IrrHas(apic, Vector));
    }
}
