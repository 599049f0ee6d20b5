using SharpVisor.Core;

namespace SharpVisor.Core.Tests;

/// <summary>The clock's pause (a paused VM sees no time pass) and its saved state (issue 9).</summary>
public class VirtualClockTests
{
    [Fact]
    public void APausedHostClockStandsStillAndGoesOnWithoutAGap()
    {
        var clock = new VirtualClock(ClockMode.Host);
        Thread.Sleep(5);
        clock.Pause();
        long paused = clock.NowNs;
        Thread.Sleep(50);
        Assert.Equal(paused, clock.NowNs);
        clock.Resume();
        long resumed = clock.NowNs;
        Assert.InRange(resumed - paused, 0, 40_000_000); // the 50 ms asleep are not guest time
        Thread.Sleep(5);
        Assert.True(clock.NowNs > resumed, "a resumed host clock must run");
    }

    [Theory]
    [InlineData(ClockMode.Host)]
    [InlineData(ClockMode.Deterministic)]
    public void RestoringAClockContinuesFromTheSavedTime(ClockMode mode)
    {
        var original = new VirtualClock(mode);
        original.AdvanceByInstructions(123_456_789);
        original.SkipTo(5_000_000_000);
        original.Pause();
        var saved = original.SaveState();

        var restored = new VirtualClock(mode);
        restored.Pause();
        restored.RestoreState(saved);
        Assert.Equal(saved.NowNs, restored.NowNs);
        restored.Resume();
        Assert.True(restored.NowNs >= saved.NowNs);
        if (mode == ClockMode.Host)
        {
            Assert.InRange(restored.NowNs - saved.NowNs, 0, 40_000_000);
        }
    }

    [Fact]
    public void AStateThatDoesNotFitTheMachineIsRefusedAndChangesNothing()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        clock.AdvanceByInstructions(1_000_000);
        long before = clock.NowNs;
        var good = clock.SaveState();
        foreach (var (bad, field) in new[]
        {
            (good with { Version = 2 }, "version"),
            (good with { Mode = ClockMode.Host }, "mode"),
            (good with { InstructionsPerMicrosecond = 7 }, "instructions per microsecond"),
            (good with { NowNs = -1 }, "time"),
            (good with { NowNs = VirtualClock.MaxNs + 1 }, "time"),
        })
        {
            var e = Assert.Throws<InvalidStateException>(() => clock.RestoreState(bad));
            Assert.Contains(field, e.Message);
            Assert.StartsWith("clock state refused", e.Message);
            Assert.Equal(before, clock.NowNs);
        }
    }
}
