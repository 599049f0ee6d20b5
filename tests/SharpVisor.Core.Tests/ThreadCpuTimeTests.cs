using SharpVisor.Core;

namespace SharpVisor.Core.Tests;

/// <summary>The translator's CPU-time counter reads the thread's CPU clock: work counts, sleep does not
/// (the project runs on Linux; elsewhere the clock reads 0 and the counter stays 0).</summary>
public class ThreadCpuTimeTests
{
    [Fact]
    public void Counts_the_threads_work_and_not_its_sleep()
    {
        long start = ThreadCpuTime.Nanoseconds();
        Thread.Sleep(200);
        long slept = ThreadCpuTime.Nanoseconds() - start;

        start = ThreadCpuTime.Nanoseconds();
        var wall = System.Diagnostics.Stopwatch.StartNew();
        ulong x = 1;
        while (wall.ElapsedMilliseconds < 200)
        {
            x = x * 6364136223846793005 + 1442695040888963407;
        }
        long worked = ThreadCpuTime.Nanoseconds() - start;

        Assert.NotEqual(0UL, x);
        Assert.True(slept < 50_000_000, $"{slept} ns of CPU while asleep for 200 ms");
        Assert.True(worked > slept + 20_000_000, $"{worked} ns of CPU while busy for 200 ms (asleep: {slept} ns)");
    }
}
