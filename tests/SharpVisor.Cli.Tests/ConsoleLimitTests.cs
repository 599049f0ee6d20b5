using System.Text.RegularExpressions;

namespace SharpVisor.Cli.Tests;

/// <summary>
/// A guest cannot make the host store unbounded console output: when stdout is not a terminal, output
/// past --console-limit is dropped and counted, and one line says so (issue 16 defect 11: a guest
/// printing without pause wrote 3.5 GB in 110 s). A terminal is not limited.
/// </summary>
public partial class ConsoleLimitTests
{
    const int Printed = 200_000;

    [GeneratedRegex(@"console\.dropped_bytes (\d+)")]
    private static partial Regex DroppedCounter();

    static List<string> LimitWarnings(string stderr) => [.. stderr.Split('\n').Where(l => l.Contains("--console-limit", StringComparison.Ordinal))];

    [Fact]
    public void OutputPastTheLimitIsDroppedCountedAndReportedOnce()
    {
        using var kernel = TestGuests.Write(TestGuests.PrintThenPowerOff(Printed));
        var run = CliProcess.Run(TimeSpan.FromSeconds(120), "run", "--kernel", kernel.Path, "--console-limit", "64K", "--stats");
        Assert.Equal(TestGuests.PowerOffStatus, run.ExitCode);
        Assert.Equal(64 * 1024, run.StdoutLength);
        Assert.All(run.Stdout, b => Assert.Equal((byte)'x', b));
        var warning = Assert.Single(LimitWarnings(run.Stderr));
        Assert.Contains("console: guest output reached the --console-limit of 65536 bytes", warning);
        var dropped = DroppedCounter().Match(run.Stderr);
        Assert.True(dropped.Success, run.ToString());
        Assert.Equal(Printed - 64 * 1024, long.Parse(dropped.Groups[1].Value));
    }

    [Fact]
    public void NoneLiftsTheLimit()
    {
        using var kernel = TestGuests.Write(TestGuests.PrintThenPowerOff(Printed));
        var run = CliProcess.Run(TimeSpan.FromSeconds(120), "run", "--kernel", kernel.Path, "--console-limit", "none", "--stats");
        Assert.Equal(TestGuests.PowerOffStatus, run.ExitCode);
        Assert.Equal(Printed, run.StdoutLength);
        Assert.Empty(LimitWarnings(run.Stderr));
        Assert.False(DroppedCounter().IsMatch(run.Stderr), run.ToString());
    }

    /// <summary>Through a pseudo-terminal (script(1) runs the command on one) the limit does not apply: someone is watching.</summary>
    [Fact]
    public void ATerminalIsNotLimited()
    {
        using var kernel = TestGuests.Write(TestGuests.PrintThenPowerOff(Printed));
        using var script = CliProcess.StartProgram("script", "-qefc", CliProcess.CommandLine("run", "--kernel", kernel.Path, "--console-limit", "1K"), "/dev/null");
        var run = script.WaitForExit(TimeSpan.FromSeconds(120));
        Assert.Equal(TestGuests.PowerOffStatus, run.ExitCode);
        Assert.Equal(Printed, run.Stdout.Count(b => b == 'x'));
        Assert.Empty(LimitWarnings(run.StdoutText));
    }
}
