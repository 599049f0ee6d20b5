using System.Diagnostics;
using System.Text.Json;

namespace SharpVisor.Devices.Tests.Storage;

/// <summary>Runs the host's qemu-img / qemu-io (Debian qemu-utils; ./test.sh installs it).</summary>
static class QemuImg
{
    public static string Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        Process p;
        try
        {
            p = Process.Start(psi)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"{tool} is not installed (Debian package qemu-utils; ./test.sh installs it): {e.Message}");
        }
        using (p)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(60_000))
            {
                p.Kill();
                throw new TimeoutException($"{tool} {string.Join(' ', args)} hung");
            }
            if (p.ExitCode != 0)
            {
                throw new InvalidOperationException($"{tool} {string.Join(' ', args)} exited {p.ExitCode}: {stderr.Result}{stdout.Result}");
            }
            return stdout.Result;
        }
    }

    public static void Create(string path, long size, string options) =>
        Run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, size.ToString());

    /// <summary>`qemu-img check`: asserts no corruptions, no leaks and no check errors.</summary>
    public static void AssertClean(string path) => AssertConsistent(path, leaksAllowed: false);

    /// <summary>`qemu-img check`: no corruptions and no check errors; leaked clusters only when allowed.</summary>
    public static void AssertConsistent(string path, bool leaksAllowed)
    {
        // qemu-img check exits 2 on corruption and 3 on leaks; the JSON says which.
        var psi = new ProcessStartInfo("qemu-img") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "check", "--output=json", path })
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        string json = p.StandardOutput.ReadToEnd();
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(json.Length > 0, $"qemu-img check printed nothing: {err}");
        using var doc = JsonDocument.Parse(json);
        var root = doc.RootElement;
        long Field(string name) => root.TryGetProperty(name, out var v) ? v.GetInt64() : 0;
        bool ok = Field("corruptions") == 0 && Field("check-errors") == 0
            && (leaksAllowed ? p.ExitCode is 0 or 3 : Field("leaks") == 0 && p.ExitCode == 0);
        Assert.True(ok,
            $"qemu-img check {path}: exit {p.ExitCode}: {json} {err}");
    }

    /// <summary>`qemu-img check -r all`: QEMU rebuilds the refcounts (its exit code tells what it found, not whether it repaired).</summary>
    public static void Repair(string path)
    {
        var psi = new ProcessStartInfo("qemu-img") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "check", "-r", "all", path })
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        p.StandardOutput.ReadToEnd();
        p.StandardError.ReadToEnd();
        p.WaitForExit();
    }

    /// <summary>The guest-visible contents, as QEMU reads them.</summary>
    public static byte[] ToRaw(string path)
    {
        string raw = path + ".raw";
        try
        {
            Run("qemu-img", "convert", "-O", "raw", path, raw);
            return File.ReadAllBytes(raw);
        }
        finally
        {
            File.Delete(raw);
        }
    }
}
