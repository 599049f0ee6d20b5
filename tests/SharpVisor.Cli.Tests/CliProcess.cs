using System.Diagnostics;
using System.Text;

namespace SharpVisor.Cli.Tests;

/// <summary>How a run of the built `sharpvisor` command ended.</summary>
/// <param name="Stdout">The first <see cref="CliProcess.KeptStdout"/> bytes of standard output.</param>
/// <param name="StdoutLength">Every byte written to standard output, counted.</param>
internal sealed record CliResult(int ExitCode, byte[] Stdout, long StdoutLength, string Stderr, TimeSpan Elapsed)
{
    public string StdoutText => Encoding.ASCII.GetString(Stdout);
    public override string ToString() => $"exit {ExitCode} after {Elapsed.TotalSeconds:F1} s, {StdoutLength} bytes on stdout, stderr:\n{Stderr}";
}

/// <summary>
/// Runs the `sharpvisor` command built next to these tests as a child process, with stdin and
/// stdout redirected (not a terminal), as a script or CI job runs it.
/// </summary>
internal sealed class CliProcess : IDisposable
{
    public const int KeptStdout = 1 << 20;
    readonly Process _process;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly MemoryStream _stdout = new();
    readonly StringBuilder _stderr = new();
    readonly Task _stdoutPump;
    long _stdoutLength;

    /// <summary>Starts `sharpvisor ARGS`.</summary>
    public CliProcess(params string[] args)
        : this(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet", [Path.Combine(AppContext.BaseDirectory, "sharpvisor.dll"), .. args])
    {
    }

    /// <summary>The command that runs sharpvisor, for another program to run it (e.g. script(1) on a pseudo-terminal).</summary>
    public static string CommandLine(params string[] args) =>
        string.Join(' ', new[] { Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet", Path.Combine(AppContext.BaseDirectory, "sharpvisor.dll") }
            .Concat(args).Select(a => $"'{a.Replace("'", "'\\''", StringComparison.Ordinal)}'"));

    /// <summary>Starts another program.</summary>
    public static CliProcess StartProgram(string executable, params string[] args) => new(executable, args.AsEnumerable());

    CliProcess(string executable, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(executable)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        _process = Process.Start(psi)!;
        _process.StandardInput.Close(); // the guest's console input ends at once
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (_stderr)
                {
                    _stderr.AppendLine(e.Data);
                }
            }
        };
        _process.BeginErrorReadLine();
        _stdoutPump = Task.Run(PumpStdout);
    }

    public int Id => _process.Id;

    /// <summary>Bytes written to stdout so far.</summary>
    public long StdoutLength => Interlocked.Read(ref _stdoutLength);

    void PumpStdout()
    {
        var stream = _process.StandardOutput.BaseStream;
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = stream.Read(buffer)) > 0)
        {
            lock (_stdout)
            {
                _stdout.Write(buffer, 0, (int)Math.Min(n, Math.Max(0, KeptStdout - _stdout.Length)));
            }
            Interlocked.Add(ref _stdoutLength, n);
        }
    }

    /// <summary>Waits until stdout holds <paramref name="text"/>; false if the process ended or the time ran out first.</summary>
    public bool WaitForOutput(string text, TimeSpan limit)
    {
        var end = _clock.Elapsed + limit;
        while (_clock.Elapsed < end)
        {
            lock (_stdout)
            {
                if (Encoding.ASCII.GetString(_stdout.GetBuffer(), 0, (int)_stdout.Length).Contains(text, StringComparison.Ordinal))
                {
                    return true;
                }
            }
            if (_process.HasExited)
            {
                return false;
            }
            Thread.Sleep(20);
        }
        return false;
    }

    /// <summary>Sends a POSIX signal to the process (kill(1)).</summary>
    public void Signal(string name)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", $"-{name} {_process.Id}") { UseShellExecute = false })!;
        kill.WaitForExit();
        Assert.Equal(0, kill.ExitCode);
    }

    /// <summary>Waits for the process to end; kills it and fails the test if it runs past <paramref name="limit"/>.</summary>
    public CliResult WaitForExit(TimeSpan limit)
    {
        if (!_process.WaitForExit(limit))
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
            Assert.Fail($"sharpvisor still running after {limit.TotalSeconds} s (killed); stderr:\n{Stderr()}");
        }
        _process.WaitForExit(); // drains the asynchronous stderr reader
        _stdoutPump.Wait();
        lock (_stdout)
        {
            return new CliResult(_process.ExitCode, _stdout.ToArray(), StdoutLength, Stderr(), _clock.Elapsed);
        }
    }

    string Stderr()
    {
        lock (_stderr)
        {
            return _stderr.ToString();
        }
    }

    /// <summary>Runs `sharpvisor ARGS` to the end (at most <paramref name="limit"/>).</summary>
    public static CliResult Run(TimeSpan limit, params string[] args)
    {
        using var p = new CliProcess(args);
        return p.WaitForExit(limit);
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
        _process.Dispose();
    }
}
