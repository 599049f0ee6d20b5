using System.Diagnostics;

namespace SharpVisor.Cpu.X86.Tests.Harness;

/// <summary>
/// Runs machine code in ring 3 on the host CPU with EFLAGS.AC set, in a child process
/// (Native/alignment-oracle.c, built by the host's gcc): a misaligned access there raises a real
/// #AC, which Linux turns into SIGBUS — fatal to the test process if it ran in-process as the
/// <see cref="DifferentialRunner"/> does.
/// </summary>
public static class HostAlignmentOracle
{
    /// <summary>Where the child runs the code: assemble cases for this address.</summary>
    public const ulong CodeAddress = 0x2000_0000;

    /// <summary>How a case ended on the host, in the exception classes the tests compare.</summary>
    public enum Outcome { None, AlignmentCheck, GeneralProtection, Other }

    public readonly record struct Case(bool StackOffset, int Offset, byte[] Code);

    static readonly Lazy<string> s_program = new(Build);

    /// <summary>Runs every case in one child process and returns how each ended.</summary>
    public static Outcome[] Run(IReadOnlyList<Case> cases)
    {
        var psi = new ProcessStartInfo(s_program.Value) { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        using var p = Process.Start(psi)!;
        var reader = Task.Run(() => p.StandardOutput.ReadToEnd());
        foreach (var c in cases)
        {
            p.StandardInput.WriteLine($"{(c.StackOffset ? 's' : 'd')} {c.Offset} {Convert.ToHexString(c.Code)}");
        }
        p.StandardInput.Close();
        string[] lines = reader.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        p.WaitForExit();
        Assert.True(p.ExitCode == 0 && lines.Length == cases.Count, $"alignment-oracle exited with {p.ExitCode} after {lines.Length} of {cases.Count} cases");
        return [.. lines.Select(Parse)];
    }

    /// <summary>SIGBUS with BUS_ADRALN is #AC; SIGSEGV with SI_KERNEL is #GP (Linux's exc_alignment_check, exc_general_protection).</summary>
    static Outcome Parse(string line)
    {
        if (line == "ok")
        {
            return Outcome.None;
        }
        string[] f = line.Split(' ');
        int signal = int.Parse(f[1]), code = int.Parse(f[3]);
        return (signal, code) switch
        {
            (7, 1) => Outcome.AlignmentCheck,
            (11, 0x80) => Outcome.GeneralProtection,
            _ => Outcome.Other,
        };
    }

    static string Build()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "SharpVisor.slnx")))
        {
            dir = dir.Parent;
        }
        Assert.True(dir is not null, "the repository root (SharpVisor.slnx) is not above the test binaries");
        string source = Path.Combine(dir.FullName, "tests", "SharpVisor.Cpu.X86.Tests", "Native", "alignment-oracle.c");
        string output = Path.Combine(Path.GetTempPath(), $"sv-alignment-oracle-{Environment.ProcessId}");
        var psi = new ProcessStartInfo("gcc") { RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in new[] { "-O2", "-Wall", "-Werror", "-o", output, source })
        {
            psi.ArgumentList.Add(arg);
        }
        using var p = Process.Start(psi)!;
        string errors = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"gcc (test.sh installs it) failed to build {source}: {errors}");
        AppDomain.CurrentDomain.ProcessExit += (_, _) => File.Delete(output);
        return output;
    }
}
