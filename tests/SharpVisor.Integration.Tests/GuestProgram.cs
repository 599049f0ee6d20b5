using System.Diagnostics;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// C programs that run inside the guest (GuestPrograms/*.c), built by the host's gcc as static
/// x86-64 executables: the Debian guest has no compiler and no C library beyond busybox.
/// </summary>
public static class GuestProgram
{
    /// <summary>Compiles GuestPrograms/<paramref name="name"/>.c and returns the executable's bytes.</summary>
    public static byte[] Build(string name)
    {
        string source = Path.Combine(GuestImage.RepoRoot(), "tests", "SharpVisor.Integration.Tests", "GuestPrograms", name + ".c");
        string output = Path.Combine(Path.GetTempPath(), $"sv-prog-{name}-{Guid.NewGuid():N}");
        var psi = new ProcessStartInfo("gcc") { RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in new[] { "-static", "-O2", "-Wall", "-Werror", "-o", output, source })
        {
            psi.ArgumentList.Add(arg);
        }
        using var p = Process.Start(psi)!;
        string errors = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"gcc failed to build {source}: {errors}");
        }
        try
        {
            return File.ReadAllBytes(output);
        }
        finally
        {
            File.Delete(output);
        }
    }
}
