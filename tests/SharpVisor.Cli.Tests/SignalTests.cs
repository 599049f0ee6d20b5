namespace SharpVisor.Cli.Tests;

/// <summary>
/// A signal that ends the run stops the guest, restores the terminal and says so in one line, with
/// the conventional status 128 + signal number (issue 16 defect 4: SIGTERM exited with no message).
/// </summary>
public class SignalTests
{
    [Theory]
    [InlineData("TERM", 143)]
    [InlineData("INT", 130)]
    [InlineData("HUP", 129)]
    public void ASignalStopsTheGuestWithOneLineAndStatus128PlusItsNumber(string signal, int status)
    {
        using var kernel = TestGuests.Write(TestGuests.PrintThenHalt("ready"));
        using var cli = new CliProcess("run", "--kernel", kernel.Path, "--timeout", "60");
        Assert.True(cli.WaitForOutput("ready", TimeSpan.FromSeconds(30)), "the guest never printed 'ready'");
        cli.Signal(signal);
        var run = cli.WaitForExit(TimeSpan.FromSeconds(20));
        Assert.Equal(status, run.ExitCode);
        Assert.Equal($"sharpvisor: terminated by SIG{signal}, guest stopped", run.Stderr.Trim());
    }
}
