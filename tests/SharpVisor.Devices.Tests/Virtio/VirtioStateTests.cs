using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using SharpVisor.Core;
using SharpVisor.Devices.Net;
using SharpVisor.Devices.Pci;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

/// <summary>
/// Save and restore through the transport: a device driven part way (features, queues, requests
/// done and chains still waiting in the available ring) is saved, a fresh device and transport on a
/// copy of guest RAM is restored from it, and both then get the same further requests: used rings,
/// buffers, interrupts and register reads must match. Bad states are refused and change nothing.
/// </summary>
public sealed class VirtioStateTests : IDisposable
{
    readonly List<string> _files = [];

    public void Dispose()
    {
        foreach (var f in _files)
        {
            File.Delete(f);
        }
    }

    /// <summary>What a driver can observe, read identically on both machines (the reads change selectors the same way).</summary>
    static string Observe(VirtioTestDriver d, int msiMark, bool compareRam)
    {
        var sb = new StringBuilder();
        sb.Append($"intx={d.Intx.Level} status={d.Status:x} features={d.ReadDeviceFeatures():x} ");
        for (uint window = 0; window < 2; window++)
        {
            d.CommonWrite(VirtioPci.DriverFeatureSelect, 4, window);
            sb.Append($"driver[{window}]={d.Common(VirtioPci.DriverFeature, 4):x} ");
        }
        sb.Append($"gen={d.Common(VirtioPci.ConfigGeneration, 1)} cfgvec={d.Common(VirtioPci.ConfigMsixVector, 2)} ");
        for (int i = 0; i < d.Queues.Length; i++)
        {
            d.CommonWrite(VirtioPci.QueueSelect, 2, (ulong)i);
            sb.Append($"q{i}: size={d.Common(VirtioPci.QueueSize, 2)} vec={d.Common(VirtioPci.QueueMsixVector, 2)} ");
            sb.Append($"en={d.Common(VirtioPci.QueueEnable, 2)} desc={d.Common(VirtioPci.QueueDesc, 8):x} ");
            sb.Append($"drv={d.Common(VirtioPci.QueueDriver, 8):x} dev={d.Common(VirtioPci.QueueDevice, 8):x} ");
            var q = d.Queues[i];
            sb.Append("used=").Append(Convert.ToHexString(d.ReadRam(q.Used, 6 + 8 * q.Size))).Append(' ');
        }
        for (int o = 0; o + 1 <= d.Transport.Device.DeviceConfigSize; o++)
        {
            sb.Append($"{d.DeviceCfg(o, 1):x2}");
        }
        lock (d.Rig.Msi.Messages)
        {
            foreach (var m in d.Rig.Msi.Messages.Skip(msiMark))
            {
                sb.Append($" msi({m.Address:x},{m.Data:x},{m.RequesterId:x})");
            }
        }
        sb.Append($" isr={d.ReadIsr()} intx-after-isr={d.Intx.Level}");
        if (compareRam)
        {
            sb.Append(" ram=").Append(Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(d.ReadRam(0, 8 << 20))));
        }
        return sb.ToString();
    }

    static int MsiCount(VirtioTestDriver d)
    {
        lock (d.Rig.Msi.Messages)
        {
            return d.Rig.Msi.Messages.Count;
        }
    }

    /// <summary>Saves <paramref name="a"/>, restores a copy around <paramref name="fresh"/>, runs <paramref name="step"/> on both and compares.</summary>
    static VirtioTestDriver RoundTrip(VirtioTestDriver a, VirtioDevice fresh, Action<VirtioTestDriver> step, bool compareRam = true)
    {
        int mark = MsiCount(a);
        var state = a.Transport.SaveState();
        var b = a.RestoredCopy(fresh, state);
        Assert.Equal(Json(state), Json(b.Transport.SaveState()));
        Assert.Equal(a.Intx.Level, b.Intx.Level);
        step(a);
        step(b);
        Assert.Equal(Observe(a, mark, compareRam), Observe(b, 0, compareRam));
        return b;
    }

    static string Json(VirtioPciState s) => JsonSerializer.Serialize(s);

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Entropy_continues_identically_after_restore(bool msix)
    {
        using var a = new VirtioTestDriver(new VirtioEntropy());
        a.Start(msix: msix);
        var q = a.Queues[0];
        q.Post((a.Allocate(64), 64, true));
        q.Post((a.Allocate(32), 32, true));
        q.Notify();
        Assert.NotNull(q.TakeUsed());
        // In flight: made available, not yet notified.
        q.Post((a.Allocate(16), 16, true));
        q.Post((a.Allocate(48), 48, true));
        if (!msix)
        {
            Assert.True(a.Intx.Level); // saved while asserted: the copy must drive its line too
        }
        using var b = RoundTrip(a, new VirtioEntropy(), d =>
        {
            d.Queues[0].Notify();
            d.Queues[0].Post((d.Allocate(8), 8, true));
            d.Queues[0].Notify();
        }, compareRam: false);
        Assert.Equal(5, b.Queues[0].UsedIndex);
    }

    [Fact]
    public void Block_continues_identically_after_restore()
    {
        string path = TempFile(1 << 20);
        using var a = new VirtioTestDriver(new VirtioBlock(path, serial: "state"));
        a.Start();
        var q = a.Queues[0];
        ulong data = a.AllocateData(Enumerable.Range(0, 1024).Select(i => (byte)(i * 3)).ToArray());
        q.Post((Header(a, VirtioBlock.RequestOut, 4), 16, false), (data, 1024, false), (a.Allocate(1), 1, true));
        q.Post((Header(a, VirtioBlock.RequestIn, 3), 16, false), (a.Allocate(1536), 1536, true), (a.Allocate(1), 1, true));
        q.Notify();
        q.Post((Header(a, VirtioBlock.RequestIn, 4), 16, false), (a.Allocate(1024), 1024, true), (a.Allocate(1), 1, true));
        q.Post((Header(a, VirtioBlock.RequestGetId, 0), 16, false), (a.Allocate(20), 20, true), (a.Allocate(1), 1, true));

        string copy = TempFile(0);
        File.Copy(path, copy, overwrite: true); // the disk as it was at the pause
        using var b = RoundTrip(a, new VirtioBlock(copy, serial: "state"), d =>
        {
            var dq = d.Queues[0];
            dq.Notify();
            ulong more = d.AllocateData(new byte[512].Select((_, i) => (byte)(0xA0 ^ i)).ToArray());
            dq.Post((Header(d, VirtioBlock.RequestOut, 1), 16, false), (more, 512, false), (d.Allocate(1), 1, true));
            dq.Post((Header(d, VirtioBlock.RequestIn, 0), 16, false), (d.Allocate(2048), 2048, true), (d.Allocate(1), 1, true));
            dq.Notify();
        });
        Assert.Equal(6, b.Queues[0].UsedIndex);
        a.Dispose();
        b.Dispose();
        Assert.Equal(File.ReadAllBytes(path), File.ReadAllBytes(copy));
    }

    static ulong Header(VirtioTestDriver d, uint type, ulong sector)
    {
        var h = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h.AsSpan(8), sector);
        return d.AllocateData(h);
    }

    [Fact]
    public void Console_continues_identically_after_restore_with_its_pending_input()
    {
        var outA = new MemoryStream();
        var outB = new MemoryStream();
        var console = new VirtioConsole(data => outA.Write(data));
        using var a = new VirtioTestDriver(console);
        a.Start();
        console.Input("hello"u8);
        var rx = a.Queues[VirtioConsole.ReceiveQueue];
        rx.Post((a.Allocate(8), 8, true));
        rx.Notify();
        console.Input("world, held across the restore"u8);
        Assert.True(console.PendingInput > 0);
        var tx = a.Queues[VirtioConsole.TransmitQueue];
        tx.Post((a.AllocateData("abc"u8), 3, false));
        long before = outA.Length;

        var fresh = new VirtioConsole(data => outB.Write(data));
        using var b = RoundTrip(a, fresh, d =>
        {
            d.Queues[VirtioConsole.TransmitQueue].Notify();
            d.Queues[VirtioConsole.ReceiveQueue].Post((d.Allocate(64), 64, true));
            d.Queues[VirtioConsole.ReceiveQueue].Notify();
        });
        Assert.Equal(outA.ToArray()[(int)before..], outB.ToArray());
        Assert.Equal("abc", Encoding.ASCII.GetString(outB.ToArray()));
        Assert.Equal(0, fresh.PendingInput);
    }

    sealed class ManualBackend : INetBackend
    {
        public NetFrameReceiver? Receiver;
        public NetLinkChanged? LinkChanged;
        public readonly List<byte[]> Sent = [];

        public void Start(NetFrameReceiver receiver, NetLinkChanged linkChanged)
        {
            Receiver = receiver;
            LinkChanged = linkChanged;
        }

        public void Send(ReadOnlySpan<byte> frame) => Sent.Add(frame.ToArray());

        public void Dispose()
        {
        }
    }

    static readonly byte[] Mac = [0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF];

    static byte[] Frame(int length, byte seed) => [.. Enumerable.Range(0, length).Select(i => (byte)(seed + i))];

    [Fact]
    public void Net_continues_identically_after_restore_with_its_receive_backlog()
    {
        var backendA = new ManualBackend();
        using var a = new VirtioTestDriver(new VirtioNet(backendA, Mac));
        backendA.LinkChanged!(true);
        a.Start();
        var tx = a.Queues[VirtioNet.TransmitQueue];
        tx.Post((a.AllocateData(new byte[VirtioNet.HeaderLength]), VirtioNet.HeaderLength, false), (a.AllocateData(Frame(60, 1)), 60, false));
        tx.Notify();
        backendA.Receiver!(Frame(80, 7));   // no receive buffer yet: held
        backendA.Receiver!(Frame(1500, 9));
        tx.Post((a.AllocateData(new byte[VirtioNet.HeaderLength]), VirtioNet.HeaderLength, false), (a.AllocateData(Frame(70, 3)), 70, false));
        int sentBefore = backendA.Sent.Count;

        var backendB = new ManualBackend();
        var fresh = new VirtioNet(backendB, [0, 0, 0, 0, 0, 0]); // the MAC comes with the state
        backendB.LinkChanged!(true);                             // the new process's peer is there
        using var b = RoundTrip(a, fresh, d =>
        {
            var rx = d.Queues[VirtioNet.ReceiveQueue];
            rx.Post((d.Allocate(2048), 2048, true));
            rx.Post((d.Allocate(2048), 2048, true));
            rx.Post((d.Allocate(2048), 2048, true));
            rx.Notify();
            d.Queues[VirtioNet.TransmitQueue].Notify();
        });
        Assert.Equal(2, b.Queues[VirtioNet.ReceiveQueue].UsedIndex);
        Assert.Equal(backendA.Sent.Skip(sentBefore).Select(Convert.ToHexString), backendB.Sent.Select(Convert.ToHexString));
        Assert.Single(backendB.Sent);
    }

    [Fact]
    public void Net_link_that_differs_after_restore_is_reported_as_a_config_change()
    {
        var backendA = new ManualBackend();
        using var a = new VirtioTestDriver(new VirtioNet(backendA, Mac));
        backendA.LinkChanged!(true);
        a.Start();
        var state = a.Transport.SaveState();
        var backendB = new ManualBackend(); // no peer yet in the new process: link down
        using var b = a.RestoredCopy(new VirtioNet(backendB, Mac), state);
        Assert.Equal(0UL, b.DeviceCfg(VirtioNet.StatusOffset, 2));
        Assert.Equal((ulong)(state.ConfigGeneration + 1), b.Common(VirtioPci.ConfigGeneration, 1));
        Assert.Equal(1, b.MsiCount(0)); // the configuration vector
    }

    // ---- refusals ----

    static VirtioPciState WithQueue(VirtioPciState s, int index, Func<VirtqueueState, VirtqueueState> change)
    {
        var queues = s.Queues.ToArray();
        queues[index] = change(queues[index]);
        return s with { Queues = queues };
    }

    static VirtioPciState WithConfigByte(VirtioPciState s, int offset, byte value)
    {
        var config = s.Function.Config.ToArray();
        config[offset] = value;
        return s with { Function = s.Function with { Config = config } };
    }

    static VirtioPciState WithTableByte(VirtioPciState s, int offset, byte value)
    {
        var table = s.Function.MsixTable.ToArray();
        table[offset] = value;
        return s with { Function = s.Function with { MsixTable = table } };
    }

    public static TheoryData<string> BadStates =>
    [
        "version", "device type", "offered features", "features not offered", "no VERSION_1", "isr bits",
        "config vector", "queue count", "queue version", "size not power of two", "size above max",
        "descriptor table unaligned", "driver area unaligned", "device area unaligned", "ring wraps",
        "indices", "idle queue consumed", "queue vector", "error without needs-reset", "unknown error",
        "vendor id", "capability pointer", "msix table size", "config length", "vector control reserved",
        "pba beyond vectors", "interrupt status without intx", "intx without isr", "function version",
        "device config", "device state of another type", "device version", "missing device",
    ];

    static VirtioPciState Corrupt(VirtioPciState s, string field, VirtioPciTransport t) => field switch
    {
        "version" => s with { Version = 99 },
        "device type" => s with { DeviceType = VirtioDeviceType.Network },
        "offered features" => s with { OfferedFeatures = s.OfferedFeatures ^ 1 },
        "features not offered" => s with { DriverFeatures = s.DriverFeatures | 1UL << 40 },
        "no VERSION_1" => s with { DriverFeatures = s.DriverFeatures & ~(1UL << VirtioPci.FeatureVersion1) },
        "isr bits" => s with { Isr = 4 },
        "config vector" => s with { ConfigMsixVector = 2 },
        "queue count" => s with { Queues = [] },
        "queue version" => WithQueue(s, 0, q => q with { Version = 0 }),
        "size not power of two" => WithQueue(s, 0, q => q with { Size = 24 }),
        "size above max" => WithQueue(s, 0, q => q with { Size = 128 }),
        "descriptor table unaligned" => WithQueue(s, 0, q => q with { DescriptorTable = q.DescriptorTable + 8 }),
        "driver area unaligned" => WithQueue(s, 0, q => q with { DriverArea = q.DriverArea + 1 }),
        "device area unaligned" => WithQueue(s, 0, q => q with { DeviceArea = q.DeviceArea + 2 }),
        "ring wraps" => WithQueue(s, 0, q => q with { DeviceArea = ulong.MaxValue - 3 }),
        "indices" => WithQueue(s, 0, q => q with { NextAvail = (ushort)(q.NextUsed + q.Size + 1) }),
        "idle queue consumed" => WithQueue(s, 0, q => q with { Ready = false }),
        "queue vector" => WithQueue(s, 0, q => q with { MsixVector = 2 }),
        "error without needs-reset" => WithQueue(s, 0, q => q with { Error = VirtqueueError.HeadOutOfRange }),
        "unknown error" => WithQueue(s, 0, q => q with { Error = (VirtqueueError)99 }),
        "vendor id" => WithConfigByte(s, PciConfig.VendorId, 0x34),
        "capability pointer" => WithConfigByte(s, PciConfig.CapabilitiesPointer, 0x50),
        "msix table size" => WithConfigByte(s, t.MsiXCapabilityOffset + 2, 7),
        "config length" => s with { Function = s.Function with { Config = s.Function.Config[..256] } },
        "vector control reserved" => WithTableByte(s, 16 + 12, 3),
        "pba beyond vectors" => s with { Function = s.Function with { MsixPba = [0x10, 0, 0, 0, 0, 0, 0, 0] } },
        "interrupt status without intx" => WithConfigByte(s, PciConfig.Status, (byte)(s.Function.Config[PciConfig.Status] | (byte)PciStatus.InterruptStatus)),
        "intx without isr" => WithConfigByte(s, PciConfig.Status, (byte)(s.Function.Config[PciConfig.Status] | (byte)PciStatus.InterruptStatus)) is var x
            ? x with { Isr = 0, Function = x.Function with { IntxAsserted = true } } : s,
        "function version" => s with { Function = s.Function with { Version = 2 } },
        "device config" => s with { Device = s.Device with { Config = [1] } },
        "device state of another type" => s with { Device = s.Device with { Console = new VirtioConsoleState { PendingInput = [] } } },
        "device version" => s with { Device = s.Device with { Version = 0 } },
        "missing device" => s with { Device = null! },
        _ => throw new ArgumentException(field),
    };

    [Theory]
    [MemberData(nameof(BadStates))]
    public void A_bad_field_is_refused_and_changes_nothing(string field)
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start(); // one queue of up to 64, two MSI-X vectors
        var q = d.Queues[0];
        q.Post((d.Allocate(16), 16, true));
        q.Notify();
        q.Post((d.Allocate(16), 16, true)); // in flight
        var good = d.Transport.SaveState();
        var bad = Corrupt(good, field, d.Transport);

        var e = Assert.Throws<InvalidStateException>(() => d.Transport.RestoreState(bad));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(Json(good), Json(d.Transport.SaveState()));
        // Still the same device: it takes the waiting request.
        q.Notify();
        Assert.Equal(2, q.UsedIndex);
        Assert.Equal(0, d.Transport.QueueErrors.Value);
    }

    [Fact]
    public void The_good_state_is_accepted_by_the_same_check()
    {
        // The refusals above are not a check that refuses everything.
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        d.Transport.RestoreState(d.Transport.SaveState() with { ConfigGeneration = 7 });
        Assert.Equal(7UL, d.Common(VirtioPci.ConfigGeneration, 1));
    }

    [Fact]
    public void A_disk_of_another_size_refuses_the_state()
    {
        using var a = new VirtioTestDriver(new VirtioBlock(TempFile(1 << 20), serial: "x"));
        a.Start();
        var state = a.Transport.SaveState();
        using var b = new VirtioTestDriver(new VirtioBlock(TempFile(2 << 20), serial: "x"));
        var before = Json(b.Transport.SaveState());
        Assert.Throws<InvalidStateException>(() => b.Transport.RestoreState(state));
        Assert.Equal(before, Json(b.Transport.SaveState()));
    }

    [Fact]
    public void Console_refuses_more_pending_input_than_it_keeps()
    {
        using var d = new VirtioTestDriver(new VirtioConsole());
        d.Start();
        var s = d.Transport.SaveState();
        var bad = s with { Device = s.Device with { Console = new VirtioConsoleState { PendingInput = new byte[VirtioConsole.InputCapacity + 1] } } };
        Assert.Throws<InvalidStateException>(() => d.Transport.RestoreState(bad));
        Assert.Equal(Json(s), Json(d.Transport.SaveState()));
    }

    [Theory]
    [InlineData("frame too long")]
    [InlineData("too many frames")]
    [InlineData("status bits")]
    [InlineData("no backlog")]
    public void Net_refuses_a_bad_device_state(string field)
    {
        using var d = new VirtioTestDriver(new VirtioNet(new ManualBackend(), Mac));
        d.Start();
        var s = d.Transport.SaveState();
        var config = s.Device.Config.ToArray();
        config[VirtioNet.StatusOffset] = 2;
        var device = field switch
        {
            "frame too long" => s.Device with { Net = new VirtioNetState { ReceiveBacklog = [new byte[VirtioNet.MaxFrameLength + 1]] } },
            "too many frames" => s.Device with { Net = new VirtioNetState { ReceiveBacklog = [.. Enumerable.Range(0, VirtioNet.ReceiveBacklog + 1).Select(_ => new byte[60])] } },
            "status bits" => s.Device with { Config = config },
            _ => s.Device with { Net = null },
        };
        Assert.Throws<InvalidStateException>(() => d.Transport.RestoreState(s with { Device = device }));
        Assert.Equal(Json(s), Json(d.Transport.SaveState()));
    }

    string TempFile(int length)
    {
        string path = Path.Combine(Path.GetTempPath(), $"sv-state-{Guid.NewGuid():N}.img");
        var bytes = new byte[length];
        for (int i = 0; i < length; i++)
        {
            bytes[i] = (byte)(i * 7 + (i >> 9));
        }
        File.WriteAllBytes(path, bytes);
        _files.Add(path);
        return path;
    }
}
