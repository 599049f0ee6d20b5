using System.Collections;
using System.Net;
using System.Reflection;
using SharpVisor.Core;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// Everything a VM's components share — log, counters, the split-lock — belongs to that VM (issue 9):
/// two VMs in one process must not see each other's once-only log keys or counts, and a counter a
/// device keeps must reach <c>--stats</c> without anyone remembering to register it by hand.
/// </summary>
[Collection(VmCollection.Name)]
public class VmContextTests
{
    /// <summary>
    /// 32-bit code: disable A20 through the 8042 output port (command 0xD1, value 0xDD: A20 off, no
    /// reset), which the model refuses with a once-only warning, then leave through the debug-exit port.
    /// </summary>
    static readonly byte[] DisableA20ThenExit =
    [
        0xB0, 0xD1, 0xE6, 0x64,     // mov al, 0xD1; out 0x64, al   (write output port)
        0xB0, 0xDD, 0xE6, 0x60,     // mov al, 0xDD; out 0x60, al   (A20 = 0, reset line high)
        0xB0, 0x10, 0xE6, 0xF4,     // mov al, 0x10; out 0xF4, al   (exit status 0x21)
        0xF4,                       // hlt
    ];

    [Fact]
    public void TwoMachinesInOneProcessKeepTheirOwnLogCountersAndSplitLock()
    {
        using var kernel = new MultibootKernel(DisableA20ThenExit);
        var logs = new[] { new StringWriter(), new StringWriter() };
        var vms = logs.Select(w => new VirtualMachine(new MachineConfig { Kernel = kernel.Path, TimeoutSeconds = 30 }, _ => { }, new Log(w))).ToArray();
        try
        {
            var exits = new VmExit[2];
            var threads = Enumerable.Range(0, 2).Select(i => new Thread(() => exits[i] = vms[i].Run())).ToArray();
            foreach (var t in threads)
            {
                t.Start();
            }
            foreach (var t in threads)
            {
                t.Join();
            }
            for (int i = 0; i < 2; i++)
            {
                Assert.Equal(VmExitKind.PowerOff, exits[i].Kind);
                Assert.Equal(0x21, exits[i].GuestStatus);
                // Each VM warned once in its own log: a process-wide once-only set would silence the second.
                Assert.Single(logs[i].ToString().Split('\n'), line => line.Contains("disabled A20"));
                Assert.Equal(1, vms[i].Counters.All.Single(c => c.Name == "i8042.a20_disables").Value);
            }
#pragma warning disable CS9216 // comparing the locks' identity, not locking through object
            Assert.False(ReferenceEquals(vms[0].Cpus[0].SplitLock, vms[1].Cpus[0].SplitLock), "the VMs share a split-lock");
            Assert.True(ReferenceEquals(vms[0].Cpus[0].SplitLock, vms[0].Cpus[1 % vms[0].Cpus.Length].SplitLock));
#pragma warning restore CS9216
        }
        finally
        {
            foreach (var vm in vms)
            {
                vm.Dispose();
            }
        }
    }

    /// <summary>
    /// Walks everything a fully equipped VM holds (2 vCPUs, VT-d with device-TLBs off and on, every
    /// virtio device, a disk, a network socket) and checks that each <see cref="Counter"/> it finds is
    /// in the VM's registry (so <c>--stats</c> prints it) and each <see cref="Log"/> is the VM's own.
    /// </summary>
    [Fact]
    public void EveryCounterOfAMachineIsRegisteredAndEveryComponentLogsToItsLog()
    {
        using var kernel = new MultibootKernel(DisableA20ThenExit);
        string disk = Path.Combine(Path.GetTempPath(), $"sv-ctx-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(disk, new byte[1 << 20]);
        try
        {
            var config = new MachineConfig
            {
                Kernel = kernel.Path,
                Cpus = 2,
                Iommu = true,
                Rng = true,
                Console = ConsoleDevice.Virtio,
                Disks = [new DiskSpec(disk)],
                Net = NetSpec.StreamListen(new IPEndPoint(IPAddress.Loopback, TestHelpers.FreePort())),
            };
            var log = new Log(TextWriter.Null);
            using var vm = new VirtualMachine(config, _ => { }, log);
            var (counters, logs) = Reachable(vm);
            var registered = vm.Counters.All.ToHashSet();
            var missing = counters.Where(c => !registered.Contains(c)).Select(c => c.Name).Order().ToList();
            Assert.True(missing.Count == 0, $"counters kept by the VM's components but not in its registry: {string.Join(", ", missing)}");
            Assert.All(logs, l => Assert.Same(log, l));
            Assert.Contains(counters, c => c.Name.StartsWith("lapic1.", StringComparison.Ordinal)); // the walk does reach deep
        }
        finally
        {
            File.Delete(disk);
        }
    }

    /// <summary>Every Counter and Log reachable from <paramref name="root"/> through fields, collections and delegate targets.</summary>
    static (List<Counter> Counters, List<Log> Logs) Reachable(object root)
    {
        var counters = new List<Counter>();
        var logs = new List<Log>();
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        var pending = new Stack<object>();
        pending.Push(root);
        while (pending.Count > 0)
        {
            object o = pending.Pop();
            if (!o.GetType().IsValueType && !seen.Add(o))
            {
                continue;
            }
            switch (o)
            {
                case Counter c:
                    counters.Add(c);
                    continue;
                case Log l:
                    logs.Add(l);
                    continue;
                case Delegate d:
                    foreach (var single in d.GetInvocationList())
                    {
                        if (single.Target is { } target)
                        {
                            pending.Push(target);
                        }
                    }
                    continue;
                case Array a:
                    if (!a.GetType().GetElementType()!.IsPrimitive)
                    {
                        foreach (var item in a)
                        {
                            if (item is not null)
                            {
                                pending.Push(item);
                            }
                        }
                    }
                    continue;
            }
            var type = o.GetType();
            if (IsOurs(type) || type.IsGenericType && type.GetGenericTypeDefinition() == typeof(KeyValuePair<,>))
            {
                for (var t = type; t is not null && t != typeof(object); t = t.BaseType)
                {
                    foreach (var f in t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                    {
                        if (!f.FieldType.IsPrimitive && !f.FieldType.IsPointer && f.GetValue(o) is { } value)
                        {
                            pending.Push(value);
                        }
                    }
                }
            }
            else if (o is IEnumerable items and not string && type.Namespace?.StartsWith("System.Collections", StringComparison.Ordinal) == true)
            {
                foreach (var item in items)
                {
                    if (item is not null)
                    {
                        pending.Push(item);
                    }
                }
            }
        }
        return (counters, logs);
    }

    static bool IsOurs(Type t) => t.Assembly.GetName().Name?.StartsWith("SharpVisor", StringComparison.Ordinal) == true;
}
