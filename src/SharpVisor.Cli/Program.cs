using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Cli;

/// <summary>
/// The `sharpvisor` command. Exit status: 0 when the guest powers off; 1 with one line on stderr
/// for anything else (bad options, missing files, triple fault, timeout); 2 for usage errors.
/// </summary>
public static class Program
{
    const string Usage = """
        usage: sharpvisor <command> [options]
          run        boot a virtual machine (see 'sharpvisor run --help')
          version    print the version
        """;

    public static int Main(string[] args)
    {
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
                    return RunCommand.Execute(Options.ParseRun(args[1..]));
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
    }
}
