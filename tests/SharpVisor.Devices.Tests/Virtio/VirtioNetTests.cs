using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using SharpVisor.Devices.Net;
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

    /// <summary>A backend the test drives by hand: it records sent frames and raises link changes.</summary>
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

    static ulong LinkStatus(VirtioTestDriver d) => d.DeviceCfg(VirtioNet.StatusOffset, 2);
    static ulong Generation(VirtioTestDriver d) => d.Common(VirtioPci.ConfigGeneration, 1);

    [Fact]
    public void Config_has_the_mac_and_the_link_is_down_until_the_backend_has_a_peer()
    {
        var backend = new ManualBackend();
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start();
        Assert.Equal(0x1041u, d.Cfg(2, 2));
        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(MacA[i], (byte)d.DeviceCfg(i, 1));
        }
        Assert.Equal(0UL, LinkStatus(d));
        Assert.NotEqual(0UL, d.Transport.NegotiatedFeatures & 1UL << VirtioNet.FeatureMac);
        Assert.NotEqual(0UL, d.Transport.NegotiatedFeatures & 1UL << VirtioNet.FeatureStatus);
    }

    /// <summary>
    /// Linux's virtnet_config_changed (the config vector's handler) re-reads status and switches
    /// the carrier; without the interrupt the guest would never notice the cable.
    /// </summary>
    [Fact]
    public void Link_changes_update_status_and_send_a_config_interrupt()
    {
        var backend = new ManualBackend();
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start();
        ulong generation = Generation(d);

        backend.LinkChanged!(true);
        Assert.Equal((ulong)VirtioNet.StatusLinkUp, LinkStatus(d));
        Assert.Equal(1, d.MsiCount(0)); // config vector
        Assert.NotEqual(generation, Generation(d));

        backend.LinkChanged(true); // no change: no interrupt
        Assert.Equal(1, d.MsiCount(0));

        backend.LinkChanged(false);
        Assert.Equal(0UL, LinkStatus(d));
        Assert.Equal(2, d.MsiCount(0));
        Assert.Equal(0, d.MsiCount(1)); // no queue interrupt
    }

    [Fact]
    public void Link_change_before_driver_ok_updates_status_without_an_interrupt()
    {
        var backend = new ManualBackend();
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start(driverOk: false);
        backend.LinkChanged!(true);
        Assert.Equal((ulong)VirtioNet.StatusLinkUp, LinkStatus(d));
        Assert.Empty(d.Rig.Msi.Messages);
    }

    [Fact]
    public void Link_change_without_msix_sets_the_isr_config_bit()
    {
        var backend = new ManualBackend();
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start(msix: false);
        backend.LinkChanged!(true);
        Assert.Equal(VirtioPci.IsrConfig, d.ReadIsr());
        Assert.Equal(0, d.ReadIsr());
    }

    [Fact]
    public void Transmit_goes_to_the_backend_without_the_header_and_an_oversized_frame_is_dropped()
    {
        var backend = new ManualBackend();
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start();
        var net = (VirtioNet)d.Device;
        var tx = d.Queues[VirtioNet.TransmitQueue];
        var frame = Frame(MacB, MacA, 46);
        ulong header = d.AllocateData(new byte[VirtioNet.HeaderLength]);
        ulong data = d.AllocateData(frame);
        tx.Post((header, VirtioNet.HeaderLength, false), (data, (uint)frame.Length, false));
        ulong big = d.Allocate(VirtioNet.HeaderLength + VirtioNet.MaxFrameLength + 1);
        tx.Post((big, VirtioNet.HeaderLength + VirtioNet.MaxFrameLength + 1, false));
        tx.Notify();
        Assert.Equal(frame, Assert.Single(backend.Sent));
        Assert.Equal(1, net.TxDropped.Value);
        Assert.NotNull(tx.TakeUsed());
        Assert.NotNull(tx.TakeUsed()); // the dropped frame's buffer is returned too
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
        Assert.True(WaitFor(() => ((VirtioNet)a.Device).LinkUp && ((VirtioNet)b.Device).LinkUp));

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

    static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    static void PostReceiveBuffer(VirtioTestDriver d, out ulong buffer)
    {
        var rx = d.Queues[VirtioNet.ReceiveQueue];
        buffer = d.Allocate(VirtioNet.HeaderLength + 1514);
        rx.Post((buffer, VirtioNet.HeaderLength + 1514, true));
        rx.Notify();
    }

    /// <summary>The wire format QEMU's socket/stream netdev uses: a 4-byte big-endian length, then the frame.</summary>
    [Fact]
    public void Frames_on_the_wire_carry_a_big_endian_length_both_ways()
    {
        using var listen = StreamSocketNetBackend.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        using var d = new VirtioTestDriver(new VirtioNet(listen, MacA));
        d.Start();
        using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        peer.Connect((IPEndPoint)listen.LocalEndPoint!);
        peer.ReceiveTimeout = 5000;
        Assert.True(WaitFor(() => ((VirtioNet)d.Device).LinkUp));

        var inbound = Frame(MacA, MacB, 60);
        var wire = new byte[4 + inbound.Length];
        BinaryPrimitives.WriteInt32BigEndian(wire, inbound.Length);
        inbound.CopyTo(wire, 4);
        PostReceiveBuffer(d, out ulong rxBuffer);
        peer.Send(wire);
        var rx = d.Queues[VirtioNet.ReceiveQueue];
        (uint Id, uint Length)? used = null;
        Assert.True(WaitFor(() => (used = rx.TakeUsed()) is not null), "frame did not arrive");
        Assert.Equal(inbound, d.ReadRam(rxBuffer + VirtioNet.HeaderLength, inbound.Length));

        var outbound = Frame(MacB, MacA, 33);
        var tx = d.Queues[VirtioNet.TransmitQueue];
        tx.Post((d.AllocateData(new byte[VirtioNet.HeaderLength]), VirtioNet.HeaderLength, false), (d.AllocateData(outbound), (uint)outbound.Length, false));
        tx.Notify();
        var got = new byte[4 + outbound.Length];
        for (int n = 0; n < got.Length;)
        {
            n += peer.Receive(got.AsSpan(n));
        }
        Assert.Equal(outbound.Length, BinaryPrimitives.ReadInt32BigEndian(got));
        Assert.Equal(outbound, got[4..]);
    }

    /// <summary>The connecting VM may start first: it keeps retrying, and its link comes up when the listener appears.</summary>
    [Fact]
    public void Connect_side_retries_until_the_listener_appears()
    {
        var endPoint = new IPEndPoint(IPAddress.Loopback, FreePort());
        using var connect = StreamSocketNetBackend.Connect(endPoint);
        using var b = new VirtioTestDriver(new VirtioNet(connect, MacB));
        b.Start();
        Thread.Sleep(300); // at least one refused attempt
        Assert.False(((VirtioNet)b.Device).LinkUp);
        using var listen = StreamSocketNetBackend.Listen(endPoint);
        using var a = new VirtioTestDriver(new VirtioNet(listen, MacA));
        a.Start();
        Assert.True(WaitFor(() => ((VirtioNet)a.Device).LinkUp && ((VirtioNet)b.Device).LinkUp));
    }

    /// <summary>A peer that goes away takes the link down (config interrupt), not the VM; a new peer brings it back.</summary>
    [Fact]
    public void Peer_disconnect_takes_the_link_down_and_a_new_peer_brings_it_back()
    {
        using var listen = StreamSocketNetBackend.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        using var a = new VirtioTestDriver(new VirtioNet(listen, MacA));
        a.Start();
        var nic = (VirtioNet)a.Device;
        var endPoint = (IPEndPoint)listen.LocalEndPoint!;
        using (var first = StreamSocketNetBackend.Connect(endPoint))
        using (var b = new VirtioTestDriver(new VirtioNet(first, MacB)))
        {
            b.Start();
            Assert.True(WaitFor(() => nic.LinkUp));
        }
        Assert.True(WaitFor(() => !nic.LinkUp), "link still up after the peer left");
        Assert.True(WaitFor(() => a.MsiCount(0) == 2), "no config interrupt for link up and link down");
        Assert.Equal(0, a.Status & VirtioPci.StatusNeedsReset);

        using var second = StreamSocketNetBackend.Connect(endPoint);
        using var c = new VirtioTestDriver(new VirtioNet(second, MacB));
        c.Start();
        Assert.True(WaitFor(() => nic.LinkUp), "a second peer was not accepted");
        Assert.True(WaitFor(() => a.MsiCount(0) == 3));
    }

    [Fact]
    public void Connect_side_reconnects_when_the_listener_comes_back()
    {
        var endPoint = new IPEndPoint(IPAddress.Loopback, FreePort());
        using var connect = StreamSocketNetBackend.Connect(endPoint);
        using var b = new VirtioTestDriver(new VirtioNet(connect, MacB));
        b.Start();
        var nic = (VirtioNet)b.Device;
        using (var listen = StreamSocketNetBackend.Listen(endPoint))
        using (var a = new VirtioTestDriver(new VirtioNet(listen, MacA)))
        {
            a.Start();
            Assert.True(WaitFor(() => nic.LinkUp));
        }
        Assert.True(WaitFor(() => !nic.LinkUp));
        using var again = StreamSocketNetBackend.Listen(endPoint);
        using var a2 = new VirtioTestDriver(new VirtioNet(again, MacA));
        a2.Start();
        Assert.True(WaitFor(() => nic.LinkUp), "did not reconnect");
    }

    /// <summary>A length the device can never carry is a framing error: the connection (not the VM) ends.</summary>
    [Fact]
    public void A_frame_length_above_the_maximum_closes_the_connection()
    {
        using var listen = StreamSocketNetBackend.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        using var d = new VirtioTestDriver(new VirtioNet(listen, MacA));
        d.Start();
        var nic = (VirtioNet)d.Device;
        using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        peer.Connect((IPEndPoint)listen.LocalEndPoint!);
        Assert.True(WaitFor(() => nic.LinkUp));
        var header = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(header, VirtioNet.MaxFrameLength + 1);
        peer.Send(header);
        Assert.True(WaitFor(() => !nic.LinkUp));
        peer.ReceiveTimeout = 5000;
        Assert.Equal(0, peer.Receive(new byte[16])); // the device closed its end
        Assert.Equal(0, nic.RxFrames.Value);
    }
}
