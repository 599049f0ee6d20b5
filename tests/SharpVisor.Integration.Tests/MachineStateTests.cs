using System.Net;
using System.Text;
using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// A machine's state is complete (issue 9): Debian's kernel running a busybox workload in
/// deterministic mode is paused at moments spread over boot and workload, its state taken, the machine thrown away and a
/// fresh one built from the state in the same process — with two vCPUs, VT-d on, a virtio disk
/// and a virtio NIC (link down: no peer) — and the console output must be byte for byte what an uninterrupted run prints.
/// Anything the state forgot (a latched register, a pending interrupt, a timer deadline, a queue
/// index) changes what the guest does next, and deterministic mode makes that visible.
/// </summary>
[Collection(VmCollection.Name)]
public class MachineStateTests
{
    /// <summary>
    /// CPU-bound programs between uses of each device, so that handovers fall between device uses and
    /// the rebuilt machine's disk and timers must carry on from the saved state. (No virtio entropy
    /// source: it hands the guest host randomness, so even two uninterrupted runs differ.)
    /// </summary>
    internal const string Workload = """
        #!/bin/sh
        echo '==start=='
        seq 1 3000 | md5sum
        dd if=/dev/vda bs=4096 count=64 2>/dev/null | md5sum
        seq 1 4000 | sort -rn | head -3
        seq 1 20000 | dd of=/dev/vda bs=4096 conv=fsync 2>/dev/null; echo "written=$?"
        seq 1 2000 | gzip -6 | gunzip | sha1sum
        dd if=/dev/vda bs=4096 count=32 2>/dev/null | md5sum
        awk 'BEGIN { s = 0; for (i = 1; i <= 800; i++) s += i * i; printf "%d %.6f\n", s, s / 7 }'
        echo $((123456789 * 987654321 % 1000003))
        seq 1 30000 | dd of=/dev/vda bs=4096 seek=100 conv=fsync 2>/dev/null; echo "written=$?"
        printf '%s\n' pear apple fig | sort | tr a-z A-Z
        dd if=/dev/vda bs=4096 skip=100 count=48 2>/dev/null | md5sum
        echo '==end=='
        poweroff -f
        """;

    [Fact]
    public void AMachineRebuiltFromItsStateContinuesExactlyAsTheOriginalWould()
    {
        var image = GuestImage.Default;
        string initrd = image.WithTestScript(Workload.Replace("\r\n", "\n"));
        string disk = Path.Combine(Path.GetTempPath(), $"sv-state-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(disk, new byte[16 << 20]);
        try
        {
            int port = TestHelpers.FreePort();
            double timeout = 600;
            long referenceNs = 0;
            MachineConfig Config() => new()
            {
                Kernel = image.Kernel,
                Initrd = initrd,
                CommandLine = "console=ttyS0 quiet",
                Cpus = 2,
                MemoryMiB = 512,
                Iommu = true,
                Clock = ClockMode.Deterministic,
                TimeoutSeconds = timeout,
                Disks = [new DiskSpec(disk)],
                Net = NetSpec.StreamListen(new IPEndPoint(IPAddress.Loopback, port)),
                Tier = TestHelpers.Tier,
            };

            var reference = new MemoryStream();
            VmExit referenceExit;
            using (var vm = new VirtualMachine(Config(), reference.WriteByte, new Log(TextWriter.Null)))
            {
                referenceExit = vm.Run();
                // A rebuilt machine that lost some state may hang the guest: give it twice the guest time the workload needs.
                referenceNs = vm.Clock.NowNs;
                timeout = Math.Max(2 * referenceNs / 1e9, 10);
            }
            string expected = Encoding.UTF8.GetString(reference.ToArray());
            Assert.True(referenceExit.Kind == VmExitKind.PowerOff && expected.Contains("==end=="),
                $"the uninterrupted run did not finish the workload: {referenceExit.Message}\n{TestHelpers.Tail(expected)}");

            File.WriteAllBytes(disk, new byte[16 << 20]); // the same disk contents as the reference run began with

            // The same run, handed over to a fresh machine at moments spread over boot and workload
            // (fractions of the reference run's guest time; the pause lands at the next round of
            // slices after it, wherever the polling thread notices — each one's guest time is reported).
            double[] handovers = [0.2, 0.5, 0.8, 0.88, 0.92, 0.95, 0.97, 0.985];
            var output = new MemoryStream();
            var pausedAt = new List<long>();
            var current = new VirtualMachine(Config(), output.WriteByte, new Log(TextWriter.Null));
            VmExit exit;
            try
            {
                while (true)
                {
                    VmExit? ended = null;
                    var vm = current;
                    var runner = new Thread(() => ended = vm.Run());
                    runner.Start();
                    if (pausedAt.Count < handovers.Length)
                    {
                        long target = (long)(handovers[pausedAt.Count] * referenceNs);
                        while (vm.Clock.NowNs < target && runner.IsAlive)
                        {
                            Thread.Sleep(1);
                        }
                        if (runner.IsAlive)
                        {
                            vm.Pause();
                            var state = vm.SaveState();
                            pausedAt.Add(state.Clock.NowNs);
                            vm.RequestExit(new VmExit(VmExitKind.Stopped, "handed over"));
                            runner.Join();
                            vm.Dispose(); // releases the disk image and the listening socket for its successor
                            current = VirtualMachine.FromState(Config(), state, output.WriteByte, new Log(TextWriter.Null));
                            continue;
                        }
                    }
                    runner.Join();
                    exit = ended!.Value;
                    break;
                }
            }
            finally
            {
                current.Dispose();
            }
            string actual = Encoding.UTF8.GetString(output.ToArray());
            string where = $"handed over at guest times {string.Join(", ", pausedAt.Select(ns => $"{ns / 1e9:F6} s"))}";
            Assert.True(pausedAt.Count == handovers.Length, $"{where}: the run ended before all {handovers.Length} handovers; the test proves too little");
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"{where}: the rebuilt machine did not power off: {exit.Message}\n{TestHelpers.Tail(actual)}");
            Assert.True(expected == actual, $"{where}: the output differs from the uninterrupted run's at byte {FirstDifference(expected, actual)}\n--- expected\n{TestHelpers.Tail(expected)}\n--- actual\n{TestHelpers.Tail(actual)}");
        }
        finally
        {
            File.Delete(initrd);
            File.Delete(disk);
        }
    }

    /// <summary>MachineState keeps RAM in one array: a larger guest's state is refused with one line, never cut short.</summary>
    [Fact]
    public void SavingAMachineWithMoreRamThanOneArrayHoldsIsRefused()
    {
        using var kernel = new MultibootKernel([0xF4]); // hlt
        using var vm = new VirtualMachine(new MachineConfig { Kernel = kernel.Path, MemoryMiB = 3072, TimeoutSeconds = 30 }, _ => { });
        var e = Assert.Throws<UserErrorException>(() => vm.SaveState());
        Assert.Contains("3072 MiB of RAM is not supported yet", e.Message);
    }

    /// <summary>A state that does not fit the machine, or has a field out of range, is refused with one line and no machine.</summary>
    [Fact]
    public void AStateThatDoesNotFitOrIsOutOfRangeIsRefused()
    {
        using var kernel = new MultibootKernel([0xF4]); // hlt
        var config = new MachineConfig { Kernel = kernel.Path, TimeoutSeconds = 30 };
        MachineState state;
        using (var vm = new VirtualMachine(config, _ => { }))
        {
            state = vm.SaveState();
        }
        using (var vm = VirtualMachine.FromState(config, state, _ => { }))
        {
            Assert.Equal(state.Cpus[0].Rip, vm.SaveState().Cpus[0].Rip);
        }
        var cpu = state.Cpus[0];
        int eduSlot = Array.FindIndex(state.Pci, s => s.Edu is not null);
        var edu = state.Pci[eduSlot];
        MachineState WithEdu(PciSlotState slot) => state with { Pci = [.. state.Pci.Select((s, i) => i == eduSlot ? slot : s)] };
        foreach (var (bad, config2, message) in new (MachineState, MachineConfig, string)[]
        {
            (WithEdu(edu with { Edu = null, Function = edu.Edu!.Function }), config, "was saved as a plain function"),
            (WithEdu(edu with { Edu = edu.Edu with { Factorial = 7 } }), config, "factorial register"),
            (state with { Timers = state.Timers with { Timers = state.Timers.Timers[1..] } }, config, "timers state refused"),
            (state, config with { Cpus = 2 }, "1 vCPUs saved; this machine has 2"),
            (state, config with { MemoryMiB = config.MemoryMiB * 2 }, "RAM of"),
            (state, config with { Iommu = true }, "no IOMMU state saved"),
            (state, config with { Rng = true }, "PCI functions saved"),
            (state with { Version = 99 }, config, "version 99"),
            (state with { Cpus = [cpu with { Cr0 = (cpu.Cr0 | 1UL << 31) & ~1UL }] }, config, "cpu"),
            (state with { Clock = state.Clock with { NowNs = -5 } }, config, "clock state refused"),
        })
        {
            var e = Assert.Throws<InvalidStateException>(() => VirtualMachine.FromState(config2, bad, _ => { }).Dispose());
            Assert.Contains(message, e.Message);
            Assert.DoesNotContain("\n", e.Message);
        }
    }

    internal static int FirstDifference(string a, string b)
    {
        int n = Math.Min(a.Length, b.Length);
        for (int i = 0; i < n; i++)
        {
            if (a[i] != b[i])
            {
                return i;
            }
        }
        return n;
    }
}
