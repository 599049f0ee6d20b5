using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using SharpVisor.Devices.Net;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

/// <summary>
/// A paused VM is still (issue 9): while virtio-net is paused, what its backend receives changes
/// nothing the guest can see — no byte in guest RAM, no used-ring entry, no interrupt, no link
/// change — and after Resume everything arrives intact and in order. Pause waits for a frame being
/// delivered, so a state saved while paused never holds half a frame.
/// </summary>
public class VirtioNetPauseTests
{
    static readonly byte[] MacA = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    static readonly byte[] MacB = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];
    const int RxVector = 1; // config is vector 0, queue i is vector i + 1
    const int BufferLength = VirtioNet.HeaderLength + 1514;

    static bool WaitFor(Func<bool> condition)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.ElapsedMilliseconds > 10_000)
            {
                return false;
            }
            Thread.Sleep(2);
        }
        return true;
    }

    /// <summary>Frame number <paramref name="n"/>: its payload says which it is, so order and integrity both show.</summary>
    static byte[] Frame(int n)
    {
        var f = new byte[14 + 100 + n];
        MacA.CopyTo(f, 0);
        MacB.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x88B5);
        for (int i = 14; i < f.Length; i++)
        {
            f[i] = (byte)(n * 31 + i);
        }
        return f;
    }

    /// <summary>Posts <paramref name="count"/> receive buffers; returns their addresses by head descriptor.</summary>
    static Dictionary<uint, ulong> PostReceiveBuffers(VirtioTestDriver d, int count)
    {
        var rx = d.Queues[VirtioNet.ReceiveQueue];
        var buffers = new Dictionary<uint, ulong>();
        for (int i = 0; i < count; i++)
        {
            ulong address = d.Allocate(BufferLength);
            buffers[rx.Post((address, BufferLength, true))] = address;
        }
        rx.Notify();
        return buffers;
    }

    static void SendFramed(Socket peer, byte[] frame)
    {
        var wire = new byte[4 + frame.Length];
        BinaryPrimitives.WriteInt32BigEndian(wire, frame.Length);
        frame.CopyTo(wire, 4);
        peer.Send(wire);
    }

    /// <summary>A backend whose "reading thread" the test starts: it calls the device as a real backend does.</summary>
    sealed class ThreadBackend : INetBackend
    {
        public NetFrameReceiver? Receiver;
        public NetLinkChanged? LinkChanged;

        public void Start(NetFrameReceiver receiver, NetLinkChanged linkChanged)
        {
            Receiver = receiver;
            LinkChanged = linkChanged;
        }

        public void Send(ReadOnlySpan<byte> frame)
        {
        }

        public static Thread Run(Action work)
        {
            var t = new Thread(() => work()) { IsBackground = true };
            t.Start();
            return t;
        }

        public void Dispose()
        {
        }
    }

    [Fact]
    public void Frames_that_arrive_while_paused_reach_the_guest_after_resume_intact_and_in_order()
    {
        const int Frames = 12;
        using var listen = StreamSocketNetBackend.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        using var d = new VirtioTestDriver(new VirtioNet(listen, MacA));
        d.Start();
        var nic = (VirtioNet)d.Device;
        using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        peer.Connect((IPEndPoint)listen.LocalEndPoint!);
        Assert.True(WaitFor(() => nic.LinkUp));
        var buffers = PostReceiveBuffers(d, Frames);
        var rx = d.Queues[VirtioNet.ReceiveQueue];

        nic.Pause();
        for (int n = 0; n < Frames; n++)
        {
            SendFramed(peer, Frame(n));
        }
        Thread.Sleep(300); // time enough for the backend to deliver, were it not held
        Assert.Null(rx.TakeUsed());
        Assert.Equal(0, d.MsiCount(RxVector));
        Assert.All(buffers.Values, b => Assert.DoesNotContain(d.ReadRam(b, BufferLength), x => x != 0));
        Assert.Equal(0, nic.RxFrames.Value + nic.RxDropped.Value);
        // The device's state does not move while paused, with the frames waiting on the host side.
        string saved = JsonSerializer.Serialize(d.Transport.SaveState());
        Thread.Sleep(100);
        Assert.Equal(saved, JsonSerializer.Serialize(d.Transport.SaveState()));

        nic.Resume();
        for (int n = 0; n < Frames; n++)
        {
            (uint Id, uint Length)? used = null;
            Assert.True(WaitFor(() => (used = rx.TakeUsed()) is not null), $"frame {n} did not arrive after Resume");
            var frame = Frame(n);
            Assert.Equal((uint)(VirtioNet.HeaderLength + frame.Length), used!.Value.Length);
            Assert.Equal(frame, d.ReadRam(buffers[used.Value.Id] + VirtioNet.HeaderLength, frame.Length));
        }
        Assert.Equal(Frames, nic.RxFrames.Value);
        Assert.Equal(0, nic.RxDropped.Value);
        Assert.True(WaitFor(() => d.MsiCount(RxVector) > 0));
    }

    [Fact]
    public void Pause_waits_for_a_frame_being_delivered_and_nothing_half_done_remains()
    {
        var dma = new CheckingDmaProvider();
        var backend = new ThreadBackend();
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA), dma);
        d.Start();
        var nic = (VirtioNet)d.Device;
        var buffer = PostReceiveBuffers(d, 1).Values.Single();
        var rx = d.Queues[VirtioNet.ReceiveQueue];
        using var inside = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        // Stop the delivery right after the header is written into the guest's buffer.
        dma.OnWrite = (address, _) =>
        {
            if (address == buffer)
            {
                inside.Set();
                release.Wait();
            }
        };
        var frame = Frame(7);
        var receiver = ThreadBackend.Run(() => backend.Receiver!(frame));
        Assert.True(inside.Wait(TimeSpan.FromSeconds(10)));
        var pauser = ThreadBackend.Run(nic.Pause);
        Assert.False(pauser.Join(200), "Pause returned with a frame half delivered");
        release.Set();
        Assert.True(pauser.Join(TimeSpan.FromSeconds(10)));
        // Paused now: the frame is whole in the guest's buffer, in the used ring, and interrupted for.
        Assert.Equal(frame, d.ReadRam(buffer + VirtioNet.HeaderLength, frame.Length));
        Assert.NotNull(rx.TakeUsed());
        Assert.Equal(1, d.MsiCount(RxVector));
        Assert.True(receiver.Join(TimeSpan.FromSeconds(10)));
        nic.Resume();
    }

    [Fact]
    public void A_link_change_while_paused_is_seen_only_after_resume()
    {
        var backend = new ThreadBackend();
        using var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start();
        var nic = (VirtioNet)d.Device;
        nic.Pause();
        var thread = ThreadBackend.Run(() => backend.LinkChanged!(true));
        Assert.False(thread.Join(200), "the backend's thread was not held");
        Assert.False(nic.LinkUp);
        Assert.Equal(0, d.MsiCount(0));
        nic.Resume();
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)));
        Assert.True(nic.LinkUp);
        Assert.Equal(1, d.MsiCount(0));
    }

    [Fact]
    public void Disposing_a_paused_device_releases_its_backends_thread_without_delivering()
    {
        var backend = new ThreadBackend();
        var d = new VirtioTestDriver(new VirtioNet(backend, MacA));
        d.Start();
        var nic = (VirtioNet)d.Device;
        PostReceiveBuffers(d, 1);
        nic.Pause();
        var thread = ThreadBackend.Run(() => backend.Receiver!(Frame(1)));
        Assert.False(thread.Join(100));
        nic.Dispose();
        Assert.True(thread.Join(TimeSpan.FromSeconds(10)), "the held thread was not released by Dispose");
        Assert.Equal(0, nic.RxFrames.Value + nic.RxDropped.Value);
        d.Dispose();
    }
}
