using System.Buffers.Binary;
using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Devices.Net;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

/// <summary>A test that creates TAP interfaces: skipped (with the reason) where this host does not allow it.</summary>
public sealed class TapFactAttribute : FactAttribute
{
    public TapFactAttribute()
    {
        if (TapHost.Unavailable is { } reason)
        {
            Skip = reason;
        }
    }
}

/// <summary>Host-side helpers: a unique interface name, the `ip` tool.</summary>
public static class TapHost
{
    static readonly Lazy<string?> s_unavailable = new(Probe);

    /// <summary>Why TAP tests cannot run here, or null when they can.</summary>
    public static string? Unavailable => s_unavailable.Value;

    /// <summary>A name no other test (or agent on this host) uses: "svt" and 8 random hex digits.</summary>
    public static string UniqueName() => $"svt{Random.Shared.Next():x8}"[..11];

    static string? Probe()
    {
        if (IpTool is null)
        {
            return "the 'ip' tool (iproute2) is not installed";
        }
        try
        {
            TapNetBackend.Open(UniqueName()).Dispose();
            return null;
        }
        catch (UserErrorException e)
        {
            return $"cannot create a TAP interface here ({e.Message})";
        }
    }

    public static string? IpTool { get; } = new[] { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" }.FirstOrDefault(File.Exists);

    /// <summary>Runs `ip ARGS`; throws with its stderr when it fails.</summary>
    public static void Ip(params string[] args)
    {
        var psi = new ProcessStartInfo(IpTool!) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        string error = p.StandardError.ReadToEnd();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"ip {string.Join(' ', args)} failed: {error}");
        }
    }

    public static bool InterfaceExists(string name) => Directory.Exists($"/sys/class/net/{name}");
}

public class TapNetBackendTests
{
    static readonly byte[] GuestMac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x77];

    [Fact]
    public void A_name_longer_than_ifnamsiz_is_refused_with_one_line()
    {
        var e = Assert.Throws<UserErrorException>(() => TapNetBackend.Open("a-very-long-interface-name"));
        Assert.Contains("1 to 15 characters", e.Message);
    }

    [TapFact]
    public void A_missing_interface_is_created_and_disappears_with_the_backend()
    {
        string name = TapHost.UniqueName();
        Assert.False(TapHost.InterfaceExists(name));
        using (var tap = TapNetBackend.Open(name))
        {
            Assert.Equal(name, tap.InterfaceName);
            Assert.True(TapHost.InterfaceExists(name));
            Assert.Equal("0x1002", File.ReadAllText($"/sys/class/net/{name}/tun_flags").Trim()); // IFF_TAP | IFF_NO_PI
        }
        Assert.False(TapHost.InterfaceExists(name));
    }

    [TapFact]
    public void An_existing_persistent_tap_is_attached_and_kept()
    {
        string name = TapHost.UniqueName();
        TapHost.Ip("tuntap", "add", "dev", name, "mode", "tap");
        try
        {
            using (var tap = TapNetBackend.Open(name))
            {
                var e = Assert.Throws<UserErrorException>(() => TapNetBackend.Open(name));
                Assert.Contains("already in use", e.Message);
            }
            Assert.True(TapHost.InterfaceExists(name)); // the user's interface stays
        }
        finally
        {
            TapHost.Ip("tuntap", "del", "dev", name, "mode", "tap");
        }
    }

    [TapFact]
    public void An_interface_that_is_not_a_tap_is_refused_with_one_line()
    {
        var e = Assert.Throws<UserErrorException>(() => TapNetBackend.Open("lo"));
        Assert.Contains("'lo' exists but is not a single-queue TAP interface", e.Message);
    }

    /// <summary>The host kernel answers the guest's ARP request for the tap's own address.</summary>
    [TapFact]
    public void The_host_answers_an_arp_request_sent_through_the_device()
    {
        string name = TapHost.UniqueName();
        byte subnet = (byte)Random.Shared.Next(1, 255);
        byte[] hostIp = [10, 213, subnet, 1];
        byte[] guestIp = [10, 213, subnet, 2];
        using var tap = TapNetBackend.Open(name);
        using var d = new VirtioTestDriver(new VirtioNet(tap, GuestMac));
        d.Start();
        Assert.True(((VirtioNet)d.Device).LinkUp);
        TapHost.Ip("addr", "add", $"10.213.{subnet}.1/24", "dev", name);
        TapHost.Ip("link", "set", name, "up");

        var rx = d.Queues[VirtioNet.ReceiveQueue];
        var buffers = new Dictionary<uint, ulong>();
        for (int i = 0; i < 32; i++)
        {
            ulong b = d.Allocate(VirtioNet.HeaderLength + 1514);
            buffers[rx.Post((b, VirtioNet.HeaderLength + 1514, true))] = b;
        }
        rx.Notify();

        // RFC 826 request: who has hostIp? tell guestIp.
        var arp = new byte[42];
        arp.AsSpan(0, 6).Fill(0xFF);
        GuestMac.CopyTo(arp, 6);
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(12), 0x0806);
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(14), 1);      // Ethernet
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(16), 0x0800); // IPv4
        arp[18] = 6;
        arp[19] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(20), 1);      // request
        GuestMac.CopyTo(arp, 22);
        guestIp.CopyTo(arp, 28);
        hostIp.CopyTo(arp, 38);
        var tx = d.Queues[VirtioNet.TransmitQueue];

        var watch = Stopwatch.StartNew();
        bool answered = false;
        while (!answered && watch.ElapsedMilliseconds < 10_000)
        {
            // Repeat the request: the first may go out before the host side is fully up.
            tx.Post((d.AllocateData(new byte[VirtioNet.HeaderLength]), VirtioNet.HeaderLength, false), (d.AllocateData(arp), (uint)arp.Length, false));
            tx.Notify();
            Thread.Sleep(200);
            while (rx.TakeUsed() is { } used)
            {
                var frame = d.ReadRam(buffers[used.Id] + VirtioNet.HeaderLength, (int)used.Length - VirtioNet.HeaderLength);
                answered |= frame.Length >= 42 && BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(12)) == 0x0806
                    && BinaryPrimitives.ReadUInt16BigEndian(frame.AsSpan(20)) == 2
                    && frame.AsSpan(28, 4).SequenceEqual(hostIp) && frame.AsSpan(32, 6).SequenceEqual(GuestMac)
                    && frame.AsSpan(0, 6).SequenceEqual(GuestMac);
                buffers[rx.Post((buffers[used.Id], VirtioNet.HeaderLength + 1514, true))] = buffers[used.Id]; // repost
            }
            rx.Notify();
        }
        Assert.True(answered, "no ARP reply from the host");
    }
}
