using System.Diagnostics;
using SharpVisor.Core;

namespace SharpVisor.Machine.Boot;

/// <summary>
/// The default guest kernel: Debian's stock linux-image package, fetched with apt-get download and
/// unpacked with dpkg-deb into $XDG_CACHE_HOME/sharpvisor/guest (or ~/.cache/sharpvisor/guest).
/// Layout: guest/&lt;package&gt;.deb and guest/&lt;package&gt;/boot/vmlinuz-* (the unpacked tree).
/// </summary>
public static class DebianKernelCache
{
    /// <summary>The metapackage whose dependency names the current kernel package.</summary>
    public const string MetaPackage = "linux-image-amd64";

    public static string CacheDirectory
    {
        get
        {
            string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            string root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
            return Path.Combine(root, "sharpvisor", "guest");
        }
    }

    /// <summary>A vmlinuz already unpacked in the cache (newest package name first), or null.</summary>
    public static string? FindCachedKernel()
    {
        if (!Directory.Exists(CacheDirectory))
        {
            return null;
        }
        return Directory.GetDirectories(CacheDirectory, "linux-image-*")
            .OrderByDescending(d => d, StringComparer.Ordinal)
            .SelectMany(d => Directory.Exists(Path.Combine(d, "boot")) ? Directory.GetFiles(Path.Combine(d, "boot"), "vmlinuz-*") : [])
            .FirstOrDefault();
    }

    /// <summary>
    /// Returns the path of a Debian vmlinuz, downloading and unpacking the package when the cache
    /// has none. Failures are <see cref="UserErrorException"/>s that say what to do.
    /// </summary>
    public static string EnsureKernel()
    {
        string? cached = FindCachedKernel();
        if (cached is not null)
        {
            return cached;
        }
        Directory.CreateDirectory(CacheDirectory);
        string package = ResolveKernelPackage();
        string deb = Directory.GetFiles(CacheDirectory, package + "_*.deb").FirstOrDefault() ?? Download(package);
        // Several processes (tests, the CLI) may share the cache: unpack into a private staging
        // directory and rename it into place; whoever renames second just uses the first one's tree.
        string target = Path.Combine(CacheDirectory, package);
        string staging = Path.Combine(CacheDirectory, $".unpack-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            Run("dpkg-deb", ["-x", deb, staging], CacheDirectory, TimeSpan.FromMinutes(2));
            if (Directory.Exists(target) && !Directory.Exists(Path.Combine(target, "boot")))
            {
                // A tree left incomplete (an interrupted unpack, or another tool's files): replace it.
                Directory.Delete(target, recursive: true);
            }
            if (!Directory.Exists(target))
            {
                Directory.Move(staging, target);
            }
        }
        catch (IOException) when (Directory.Exists(target))
        {
            // Another process finished first.
        }
        finally
        {
            if (Directory.Exists(staging))
            {
                Directory.Delete(staging, recursive: true);
            }
        }
        return FindCachedKernel() ?? throw new UserErrorException($"{deb} did not contain boot/vmlinuz-*");
    }

    /// <summary>The kernel package the metapackage currently depends on, e.g. linux-image-6.1.0-56-amd64.</summary>
    public static string ResolveKernelPackage()
    {
        string output = Run("apt-cache", ["depends", MetaPackage], CacheDirectory, TimeSpan.FromMinutes(1));
        foreach (string line in output.Split('\n'))
        {
            string t = line.Trim();
            if (t.StartsWith("Depends: linux-image-", StringComparison.Ordinal))
            {
                return t["Depends: ".Length..].Trim();
            }
        }
        throw new UserErrorException($"apt-cache depends {MetaPackage} names no linux-image package (run 'apt-get update'?)");
    }

    static string Download(string package)
    {
        // Download into a private directory, then move the finished .deb into the cache.
        string staging = Path.Combine(CacheDirectory, $".download-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        try
        {
            Run("apt-get", ["download", package], staging, TimeSpan.FromMinutes(10));
            string downloaded = Directory.GetFiles(staging, package + "_*.deb").FirstOrDefault()
                ?? throw new UserErrorException($"apt-get download {package} produced no .deb");
            string final = Path.Combine(CacheDirectory, Path.GetFileName(downloaded));
            try
            {
                File.Move(downloaded, final);
            }
            catch (IOException) when (File.Exists(final))
            {
                // Another process downloaded the same package first.
            }
            return final;
        }
        finally
        {
            Directory.Delete(staging, recursive: true);
        }
    }

    static string Run(string program, string[] args, string workingDirectory, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(program)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        string commandText = program + " " + string.Join(' ', args);
        Process process;
        try
        {
            process = Process.Start(psi) ?? throw new UserErrorException($"cannot start {program}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new UserErrorException($"cannot run '{commandText}' to fetch the Debian guest kernel: {e.Message} (is this a Debian/Ubuntu host with apt?)");
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                throw new UserErrorException($"'{commandText}' did not finish within {timeout.TotalMinutes:0} minutes");
            }
            if (process.ExitCode != 0)
            {
                string err = stderr.Result.Trim();
                throw new UserErrorException($"'{commandText}' failed (exit {process.ExitCode}): {(err.Length > 400 ? err[..400] : err)}");
            }
            return stdout.Result;
        }
    }
}
