using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Cli;

/// <summary>
/// The `sharpvisor` command. Exit status: 0 when the guest powers off; 1 with one line on stderr
/// for anything else (bad options, missing files, triple fault, timeout, a VMM bug); 2 for usage
/// errors; 128 + N when signal N (SIGHUP, SIGINT, SIGTERM) ended the run. A stack trace is shown
/// only with SHARPVISOR_DEBUG=1 in the environment.
/// </summary>
public static class Program
{
    const string Usage = """
        usage: sharpvisor <command> [options]
          run        boot a virtual machine (see 'sharpvisor run --help')
          version    print the version
        """;

    /// <summary>Set SHARPVISOR_DEBUG=1 to see stack traces and debug log lines.</summary>
    const string DebugVariable = "SHARPVISOR_DEBUG";

    static bool Debugging => Environment.GetEnvironmentVariable(DebugVariable) is { Length: > 0 } v && v != "0";

    public static int Main(string[] args)
    {
        // An exception escaping any other thread is a VMM bug too: one line, and the process ends
        // (Environment.Exit also restores the terminal through TerminalConsole's exit hook).
        AppDomain.CurrentDomain.UnhandledException += (_, e) =>
            Environment.Exit(ReportUnexpected(e.ExceptionObject as Exception ?? new InvalidOperationException($"{e.ExceptionObject}"), Console.Error, Debugging));
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            Console.Out.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        try
        {
            switch (args[0])
            {
                case "version":
                    Console.Out.WriteLine($"sharpvisor {typeof(Program).Assembly.GetName().Version}");
                    return 0;
                case "run":
                    if (args.Skip(1).Any(a => a is "-h" or "--help"))
                    {
                        Console.Out.WriteLine(Options.RunUsage);
                        return 0;
                    }
                    return RunCommand.Execute(Options.ParseRun(args[1..]), new Log(Console.Error, Debugging ? LogLevel.Debug : LogLevel.Warn));
                default:
                    Console.Error.WriteLine($"sharpvisor: unknown command '{args[0]}'\n{Usage}");
                    return 2;
            }
        }
        catch (UserErrorException e)
        {
            Console.Error.WriteLine($"sharpvisor: {e.Message}");
            return 1;
        }
        catch (Exception e)
        {
            return ReportUnexpected(e, Console.Error, Debugging);
        }
    }

    /// <summary>
    /// Reports an exception nobody expected (a VMM bug, not a user mistake) as one line, with the
    /// stack trace only when <paramref name="showStackTrace"/>; returns the exit status, 1.
    /// </summary>
    public static int ReportUnexpected(Exception e, TextWriter error, bool showStackTrace)
    {
        error.WriteLine(showStackTrace
            ? $"sharpvisor: internal error: {e}"
            : $"sharpvisor: internal error: {e.GetType().Name}: {e.Message.ReplaceLineEndings(" ")} ({DebugVariable}=1 shows the stack trace)");
        error.Flush();
        return 1;
    }
}
