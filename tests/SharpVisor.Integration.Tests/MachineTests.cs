using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>Whole-machine behaviour a user relies on: several CPUs, and repeatable runs.</summary>
[Collection(VmCollection.Name)]
public class MachineTests
{
    /// <summary>--cpus 2: both CPUs come online (INIT-SIPI-SIPI) and each one runs a program.</summary>
    [Fact]
    public void TwoCpusComeOnlineAndBothRunPrograms()
    {
        var image = GuestImage.Default;
        string initrd = image.WithTestScript("""
            #!/bin/sh
            echo "online=$(cat /sys/devices/system/cpu/online)"
            echo "cpu0=$(taskset -c 0 sh -c 'seq 1 3000 | md5sum')"
            echo "cpu1=$(taskset -c 1 sh -c 'seq 1 3000 | md5sum')"
            poweroff -f
            """);
        try
        {
            var (exit, console) = BusyboxTests.Boot(image.Kernel, initrd, "console=ttyS0 quiet", timeoutSeconds: 300, cpus: 2);
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{console}");
            Assert.Contains("online=0-1", console);
            string expected = "  -";
            var lines = console.Replace("\r", "").Split('\n');
            string cpu0 = lines.Single(l => l.StartsWith("cpu0=", StringComparison.Ordinal));
            string cpu1 = lines.Single(l => l.StartsWith("cpu1=", StringComparison.Ordinal));
            Assert.EndsWith(expected, cpu0);
            Assert.Equal(cpu0[5..], cpu1[5..]); // the same work gives the same digest on either CPU
        }
        finally
        {
            File.Delete(initrd);
        }
    }

    /// <summary>--clock deterministic: two runs print byte-identical console output, kernel timestamps included.</summary>
    [Fact]
    public void DeterministicRunsPrintIdenticalBytes()
    {
        var image = GuestImage.Default;
        string initrd = image.WithTestScript("""
            #!/bin/sh
            cat /proc/uptime
            seq 1 500 | md5sum
            poweroff -f
            """);
        try
        {
            var first = BusyboxTests.Boot(image.Kernel, initrd, "console=ttyS0", timeoutSeconds: 120, clock: ClockMode.Deterministic);
            var second = BusyboxTests.Boot(image.Kernel, initrd, "console=ttyS0", timeoutSeconds: 120, clock: ClockMode.Deterministic);
            Assert.True(first.Exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {first.Exit.Message}");
            Assert.Contains("] Linux version", first.Console);
            Assert.Equal(first.Console, second.Console);
        }
        finally
        {
            File.Delete(initrd);
        }
    }
}
