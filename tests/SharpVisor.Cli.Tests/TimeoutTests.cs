namespace SharpVisor.Cli.Tests;

/// <summary>`--timeout` bounds the whole run, guest resets included (issue 16 defect 3).</summary>
public class TimeoutTests
{
    /// <summary>
    /// A guest that resets every 0.45 s of guest time would never reach a timeout that restarts
    /// with each boot (it ended in the reset-loop error after six resets, 2.7 s or more, instead): the timeout counts
    /// from the start of the run, in wall-clock time (host clock) or guest time (deterministic clock).
    /// </summary>
    [Theory]
    [InlineData("host")]
    [InlineData("deterministic")]
    public void TimeoutCountsFromTheStartOfTheRunAcrossGuestResets(string clock)
    {
        using var kernel = TestGuests.Write(TestGuests.ResetAfter(0.45));
        var run = CliProcess.Run(TimeSpan.FromSeconds(60), "run", "--kernel", kernel.Path, "--clock", clock, "--timeout", "2.5");
        Assert.True(run.StdoutText.Count(c => c == 'B') >= 2, $"the guest should have booted more than once: '{run.StdoutText}'; {run}");
        Assert.Equal(1, run.ExitCode);
        Assert.Contains("sharpvisor: timeout: the guest was still running after 2.5 s", run.Stderr);
        Assert.DoesNotContain("reset loop", run.Stderr);
    }
}
