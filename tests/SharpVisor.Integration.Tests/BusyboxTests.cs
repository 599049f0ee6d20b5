using System.Diagnostics;
using System.Text;
using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// Boots Debian's stock kernel on SharpVisor's CPU with a test script in the initramfs, runs real
/// busybox programs (hashing, compression, sorting, arithmetic, floating point), and compares their
/// output with the same busybox binary run natively on the host.
/// </summary>
[Collection(VmCollection.Name)]
public class BusyboxTests
{
    /// <summary>Each command's output must be deterministic (no times, no PIDs).</summary>
    static readonly string[] s_commands =
    [
        "seq 1 2000 | md5sum",
        "seq 1 3000 | sha256sum",
        "seq 1 5000 | sort -rn | head -3",
        "seq 1 3000 | gzip -9 | gunzip | sha1sum",
        "seq 1 3000 | gzip -1 | wc -c",
        "seq 1 2000 | bzip2 | bunzip2 | md5sum",
        "echo $((123456789 * 987654321 % 1000003)) $((-7 / 2)) $((1 << 40))",
        "awk 'BEGIN { s = 0; for (i = 1; i <= 1000; i++) s += i * i; print s; printf \"%.6f %e\\n\", 3.14159 * 2, 1 / 3 }'",
        "printf '%s\\n' pear apple fig | sort | tr a-z A-Z",
        "echo 'the quick brown fox' | sed 's/quick/slow/; s/o/0/g'",
        "seq 10 -3 -20 | xargs",
    ];

    [Fact]
    public void BusyboxProgramsPrintWhatTheyPrintOnTheHost()
    {
        var image = GuestImage.Default;
        var script = new StringBuilder("#!/bin/sh\n");
        for (int i = 0; i < s_commands.Length; i++)
        {
            script.Append($"echo '==cmd {i}=='\n{s_commands[i]}\n");
        }
        script.Append("echo '==end=='\npoweroff -f\n");
        string initrd = image.WithTestScript(script.ToString());
        try
        {
            var (exit, console) = Boot(image.Kernel, initrd, "console=ttyS0 quiet", timeoutSeconds: 300);
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{TestHelpers.Tail(console)}");
            var guest = Split(console);
            for (int i = 0; i < s_commands.Length; i++)
            {
                string host = RunOnHost(image.Busybox, s_commands[i]);
                Assert.True(guest.TryGetValue(i, out string? got), $"no output for '{s_commands[i]}'\n{TestHelpers.Tail(console)}");
                Assert.Equal(host, got);
            }
        }
        finally
        {
            File.Delete(initrd);
        }
    }

    internal static (VmExit Exit, string Console) Boot(string kernel, string initrd, string cmdline, double timeoutSeconds, int cpus = 1,
        ClockMode clock = ClockMode.Host, Func<MachineConfig, MachineConfig>? customize = null, Action<VirtualMachine>? inspect = null,
        CpuTier? tier = null)
    {
        var output = new MemoryStream();
        var config = new MachineConfig { Kernel = kernel, Initrd = initrd, CommandLine = cmdline, Cpus = cpus, Clock = clock, TimeoutSeconds = timeoutSeconds, MemoryMiB = 512, Tier = tier ?? TestHelpers.Tier };
        config = customize?.Invoke(config) ?? config;
        VirtualMachine? machine = null;
        var panic = new PanicWatch();
        using var vm = machine = new VirtualMachine(config, b =>
        {
            lock (output)
            {
                output.WriteByte(b);
            }
            // A panicked kernel never powers off: stop after its panic line instead of waiting for the timeout.
            if (panic.Feed(b))
            {
                machine?.RequestExit(new VmExit(VmExitKind.Shutdown, "the guest kernel panicked"));
            }
        });
        var exit = vm.Run();
        inspect?.Invoke(vm);
        lock (output)
        {
            return (exit, Encoding.UTF8.GetString(output.ToArray()));
        }
    }

    /// <summary>Output of each "==cmd N==" section, with the guest tty's CRLF normalised.</summary>
    static Dictionary<int, string> Split(string console)
    {
        var result = new Dictionary<int, string>();
        string text = console.Replace("\r\n", "\n");
        var marks = System.Text.RegularExpressions.Regex.Matches(text, @"^==cmd (\d+)==\n", System.Text.RegularExpressions.RegexOptions.Multiline);
        for (int m = 0; m < marks.Count; m++)
        {
            int start = marks[m].Index + marks[m].Length;
            int end = m + 1 < marks.Count ? marks[m + 1].Index : text.IndexOf("==end==", start, StringComparison.Ordinal);
            if (end < 0)
            {
                break;
            }
            result[int.Parse(marks[m].Groups[1].Value)] = text[start..end];
        }
        return result;
    }

    static string RunOnHost(string busybox, string command)
    {
        var psi = new ProcessStartInfo(busybox) { RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add("sh");
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(command);
        psi.Environment["PATH"] = "/nonexistent"; // applets only, like the guest
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return output;
    }
}

/// <summary>Tests that boot whole VMs run one at a time: each keeps the host's two cores busy.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class VmCollection
{
    public const string Name = "virtual machines";
}
