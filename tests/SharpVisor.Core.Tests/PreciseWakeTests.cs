using System.Diagnostics;
using SharpVisor.Core;

namespace SharpVisor.Core.Tests;

/// <summary>
/// The timer thread's sleep (<see cref="PreciseWake"/>): a wait shorter than a millisecond really
/// sleeps (it used to return at once, so the thread spun through the last millisecond before every
/// timer), and a Set wakes a long wait.
/// </summary>
public class PreciseWakeTests
{
    [Fact]
    public void ASubMillisecondWaitSleepsAtLeastItsTimeout()
    {
        using var wake = new PreciseWake();
        var watch = Stopwatch.StartNew();
        for (int i = 0; i < 20; i++)
        {
            wake.Reset();
            wake.Wait(300_000);
        }
        // The kernel never ends a timed wait early; twenty 300 us waits take at least 6 ms.
        Assert.True(watch.Elapsed >= TimeSpan.FromMilliseconds(5.9), $"20 waits of 300 us took {watch.Elapsed.TotalMicroseconds:F0} us");
    }

    [Fact]
    public void SetWakesAWaiterAndASetBeforeTheWaitIsNotLost()
    {
        using var wake = new PreciseWake();
        wake.Set();
        var watch = Stopwatch.StartNew();
        wake.Wait(30_000_000_000);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(15), "a Set before the wait was lost");

        wake.Reset();
        var setter = new Thread(() => { Thread.Sleep(50); wake.Set(); });
        watch.Restart();
        setter.Start();
        wake.Wait(30_000_000_000);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(15), "Set from another thread did not wake the wait");
        setter.Join();
    }

    [Fact]
    public void ResetForgetsEarlierSets()
    {
        using var wake = new PreciseWake();
        wake.Set();
        wake.Set();
        wake.Reset();
        var watch = Stopwatch.StartNew();
        wake.Wait(20_000_000);
        Assert.True(watch.Elapsed >= TimeSpan.FromMilliseconds(19), "a wait after Reset returned early");
    }
}
