namespace SharpVisor.Cli.Tests;

/// <summary>What the command prints for an exception nobody expected (a VMM bug): one line, the trace only on request.</summary>
public class ProgramTests
{
    static Exception Thrown()
    {
        try
        {
            throw new InvalidOperationException("PCI 00:1f.0 is taken by lpc");
        }
        catch (InvalidOperationException e)
        {
            return e;
        }
    }

    [Fact]
    public void AnUnexpectedExceptionIsOneLineUnlessTheTraceIsAskedFor()
    {
        var error = new StringWriter();
        Assert.Equal(1, Program.ReportUnexpected(Thrown(), error, showStackTrace: false));
        Assert.Equal("sharpvisor: internal error: InvalidOperationException: PCI 00:1f.0 is taken by lpc (SHARPVISOR_DEBUG=1 shows the stack trace)"
            + Environment.NewLine, error.ToString());

        var debug = new StringWriter();
        Program.ReportUnexpected(Thrown(), debug, showStackTrace: true);
        Assert.Contains("at SharpVisor.Cli.Tests.ProgramTests.Thrown()", debug.ToString());
    }
}
