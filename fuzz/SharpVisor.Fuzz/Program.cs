using SharpFuzz;
using SharpVisor.Core;

namespace SharpVisor.Fuzz;

/// <summary>
/// The fuzzing harness: one target per parser of untrusted bytes (see <see cref="FuzzTarget.All"/>).
/// <c>afl TARGET</c> runs under afl-fuzz through SharpFuzz's fork server (fuzz/run.sh sets that up);
/// <c>replay TARGET PATH...</c> runs each input once without a fuzzer, as CI and the regression tests do.
/// </summary>
public static class Program
{
    const string Usage = """
        usage: SharpVisor.Fuzz list
               SharpVisor.Fuzz afl TARGET                       (under afl-fuzz: one input per run on stdin)
               SharpVisor.Fuzz replay TARGET [-v] [-t SEC] PATH...  (each file, or every file in a directory)
        replay exits 1 when an input crashes (an exception other than the target's documented error)
        or runs longer than SEC seconds (default 10).
        """;

    public static int Main(string[] args)
    {
        try
        {
            return args switch
            {
                ["list"] => List(),
                ["afl", string target] => Afl(target),
                ["replay", string target, .. var rest] when rest.Length > 0 => Replay(target, rest),
                _ => UsageError(),
            };
        }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"SharpVisor.Fuzz: {e.Message}");
            return 2;
        }
    }

    static int UsageError()
    {
        Console.Error.WriteLine(Usage);
        return 2;
    }

    static int List()
    {
        foreach (var (name, description) in FuzzTarget.All)
        {
            Console.WriteLine($"{name,-10} {description}");
        }
        return 0;
    }

    static int Afl(string name)
    {
        if (!FuzzTarget.All.ContainsKey(name))
        {
            FuzzTarget.Create(name); // the unknown-target error
        }
        // Created inside the fork server: instrumented code (a guest's firmware set-up) may only run
        // once SharpFuzz has attached afl-fuzz's coverage map, or it writes through a null pointer.
        FuzzTarget? target = null;
        var input = new MemoryStream();
        // An exception escaping the action is reported to afl-fuzz as a crash. The out-of-process
        // server runs the inputs in a child it restarts: a hang (afl-fuzz kills the child) or a
        // process-killing fault (stack overflow) is saved as a finding instead of ending the campaign,
        // as an in-process fork server would ("unable to communicate with fork server").
        Fuzzer.OutOfProcess.Run(stream =>
        {
            target ??= FuzzTarget.Create(name);
            input.SetLength(0);
            stream.CopyTo(input);
            target.Run(input.ToArray());
        });
        target?.Dispose();
        return 0;
    }

    static int Replay(string name, string[] args)
    {
        bool verbose = false;
        var timeout = TimeSpan.FromSeconds(10);
        var files = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "-v":
                    verbose = true;
                    break;
                case "-t" when i + 1 < args.Length && double.TryParse(args[i + 1], out double seconds):
                    timeout = TimeSpan.FromSeconds(seconds);
                    i++;
                    break;
                default:
                    files.AddRange(InputsAt(args[i]));
                    break;
            }
        }

        using var target = FuzzTarget.Create(name);
        int accepted = 0, rejected = 0, crashes = 0;
        foreach (string file in files)
        {
            var result = ReplayOne(target, File.ReadAllBytes(file), timeout);
            switch (result)
            {
                case ReplayResult.Hang:
                    // The target's thread cannot be stopped: report and leave.
                    Console.WriteLine($"HANG {file}: no answer within {timeout.TotalSeconds:0.#} s");
                    Console.WriteLine($"replay {name}: {files.Count} inputs, stopped at a hang");
                    Console.Out.Flush();
                    Environment.Exit(1);
                    break;
                case ReplayResult.Crash crash:
                    crashes++;
                    Console.WriteLine($"CRASH {file}: {crash.Exception}");
                    break;
                case ReplayResult.Done { Outcome.Accepted: true }:
                    accepted++;
                    if (verbose)
                    {
                        Console.WriteLine($"ok {file}: accepted");
                    }
                    break;
                case ReplayResult.Done done:
                    rejected++;
                    if (verbose)
                    {
                        Console.WriteLine($"ok {file}: {done.Outcome.Error}");
                    }
                    break;
            }
        }
        Console.WriteLine($"replay {name}: {files.Count} inputs, {accepted} accepted, {rejected} refused with a one-line error, {crashes} crashes");
        return crashes == 0 ? 0 : 1;
    }

    /// <summary>The files at <paramref name="path"/>: itself, or every file below it (AFL's queue and crash folders included).</summary>
    static IEnumerable<string> InputsAt(string path)
    {
        if (File.Exists(path))
        {
            return [path];
        }
        if (Directory.Exists(path))
        {
            return Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories)
                .Where(f => !Path.GetFileName(f).StartsWith('.') && Path.GetFileName(f) != "README.txt")
                .Order(StringComparer.Ordinal);
        }
        throw new ArgumentException($"no such file or directory: {path}");
    }

    /// <summary>How one replayed input ended.</summary>
    public abstract record ReplayResult
    {
        public sealed record Done(FuzzOutcome Outcome) : ReplayResult;

        public sealed record Crash(Exception Exception) : ReplayResult;

        public sealed record Hang : ReplayResult;
    }

    /// <summary>Runs one input on its own thread so that a hang is reported instead of waited for.</summary>
    public static ReplayResult ReplayOne(FuzzTarget target, byte[] input, TimeSpan timeout)
    {
        ReplayResult? result = null;
        var thread = new Thread(() =>
        {
            try
            {
                result = new ReplayResult.Done(target.Run(input));
            }
            catch (Exception e)
            {
                result = new ReplayResult.Crash(e);
            }
        }, maxStackSize: 16 << 20)
        { IsBackground = true, Name = "fuzz-replay" };
        thread.Start();
        return thread.Join(timeout) ? result! : new ReplayResult.Hang();
    }
}
