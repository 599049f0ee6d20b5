using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

public class VirtioNetTests
{
    static readonly byte[] MacA = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    static readonly byte[] MacB = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];

    static bool WaitFor(Func<bool> condition)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.ElapsedMilliseconds > 5000)
            {
                return false;
            }
            Thread.Sleep(5);
        }
        return true;
    }

    static byte[] Frame(byte[] to, byte[] from, int payload)
    {
        var f = new byte[14 + payload];
        to.CopyTo(f, 0);
        from.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x88B5); // local experimental EtherType
        for (int i = 0; i < payload; i++)
        {
            f[14 + i] = (byte)(i * 7 + 1);
        }
        return f;
    }

    [Fact]
    public void Config_has_the_mac_and_link_up()
    {
        using var backend = StreamSocketNetBackend.Connect(new IPEndPoint(IPAddress.Loopback, 9)); // nobody there: frames dropped
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start();
        Assert.Equal(0x1041u, d.Cfg(2, 2));
        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(MacA[i], (byte)d.DeviceCfg(i, 1));
        }
        Assert.Equal(1UL, d.DeviceCfg(6, 2));
        Assert.NotEqual(0UL, d.Device.NegotiatedFeatures & 1UL << VirtioNet.FeatureMac);
    }

    [Fact]
    public void Two_vms_exchange_frames_over_a_loopback_socket_both_ways()
    {
        using var listen = StreamSocketNetBackend.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        using var connect = StreamSocketNetBackend.Connect((IPEndPoint)listen.LocalEndPoint!);
        using var a = new VirtioTestDriver(new VirtioNet(listen, MacA));
        using var b = new VirtioTestDriver(new VirtioNet(connect, MacB));
        a.Start();
        b.Start();
        Assert.True(WaitFor(() => listen.Connected && connect.Connected));

        foreach (var (from, to, fromMac, toMac) in new[] { (a, b, MacA, MacB), (b, a, MacB, MacA) })
        {
            var rx = to.Queues[VirtioNet.ReceiveQueue];
            ulong rxBuffer = to.Allocate(12 + 1514);
            ushort rxHead = rx.Post((rxBuffer, 12 + 1514, true));
            rx.Notify();

            var frame = Frame(toMac, fromMac, 100);
            var tx = from.Queues[VirtioNet.TransmitQueue];
            ulong header = from.AllocateData(new byte[12]);
            ulong data = from.AllocateData(frame);
            ushort txHead = tx.Post((header, 12, false), (data, (uint)frame.Length, false));
            tx.Notify();
            Assert.Equal((txHead, 0u), tx.TakeUsed());

            (uint Id, uint Length)? used = null;
            Assert.True(WaitFor(() => (used = rx.TakeUsed()) is not null), "frame did not arrive");
            Assert.Equal(rxHead, used!.Value.Id);
            Assert.Equal((uint)(12 + frame.Length), used.Value.Length);
            var got = to.ReadRam(rxBuffer, 12 + frame.Length);
            Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(got.AsSpan(10))); // num_buffers
            Assert.Equal(0, got[0]); // no checksum offload flags
            Assert.Equal(frame, got.AsSpan(12).ToArray());
        }
    }
}
