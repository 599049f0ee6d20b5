using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// virtio-net through Debian's own virtio_net driver: two guests on one Ethernet link (the stream
/// backend, QEMU's socket framing) configure addresses with busybox `ip`, ping each other and copy a
/// file with `nc`; the digest the receiver computes equals the sender's.
/// </summary>
[Collection(VmCollection.Name)]
public class NetworkTests
{
    /// <summary>
    /// The listening guest (10.0.2.1) receives a file on TCP port 5000 while it pings its peer; the
    /// connecting guest (10.0.2.2) pings, sends the file, then waits for a "bye" on port 5001 so that
    /// it is still up while the first guest finishes its own pings.
    /// </summary>
    internal const string ReceiverScript = """
        #!/bin/sh
        cut -d" " -f1 /proc/uptime; echo "mac=$(cat /sys/class/net/eth0/address)"
        ip link set eth0 up
        ip addr add 10.0.2.1/24 dev eth0
        # nc's stdin is a FIFO held open by sleep: an early end of stdin would make nc close its
        # sending half, which ends busybox nc on the other side before it has sent everything.
        mkfifo /tmp/hold; sleep 600 > /tmp/hold &
        timeout 120 nc -l -p 5000 < /tmp/hold > /tmp/received &
        receiving=$!
        n=0
        until ping -c 1 -W 2 10.0.2.2 > /dev/null 2>&1; do
            n=$((n + 1)); [ $n -ge 60 ] && { echo "no-reply-from=10.0.2.2"; break; }; sleep 1
        done
        [ $n -lt 60 ] && echo "$(cut -d" " -f1 /proc/uptime) reply-from=10.0.2.2"
        wait $receiving
        cut -d" " -f1 /proc/uptime; echo "received=$(sha256sum < /tmp/received | cut -d' ' -f1) bytes=$(wc -c < /tmp/received)"
        n=0
        until echo bye | nc 10.0.2.2 5001; do n=$((n + 1)); [ $n -ge 20 ] && break; sleep 1; done
        poweroff -f
        """;

    internal const string SenderScript = """
        #!/bin/sh
        cut -d" " -f1 /proc/uptime; echo "mac=$(cat /sys/class/net/eth0/address)"
        ip link set eth0 up
        ip addr add 10.0.2.2/24 dev eth0
        seq 1 60000 > /tmp/data
        echo "sent=$(sha256sum < /tmp/data | cut -d' ' -f1) bytes=$(wc -c < /tmp/data)"
        mkfifo /tmp/hold; sleep 600 > /tmp/hold &
        timeout 180 nc -l -p 5001 < /tmp/hold > /tmp/bye &
        listening=$!
        n=0
        until ping -c 1 -W 2 10.0.2.1 > /dev/null 2>&1; do
            n=$((n + 1)); [ $n -ge 60 ] && { echo "no-reply-from=10.0.2.1"; break; }; sleep 1
        done
        [ $n -lt 60 ] && echo "$(cut -d" " -f1 /proc/uptime) reply-from=10.0.2.1"
        n=0
        until nc 10.0.2.1 5000 < /tmp/data; do n=$((n + 1)); [ $n -ge 30 ] && break; sleep 1; done
        wait $listening
        cut -d" " -f1 /proc/uptime; echo "peer-said=$(cat /tmp/bye)"
        poweroff -f
        """;

    [Fact]
    public async Task TwoVmsPingEachOtherAndCopyAFileOverTheStreamBackend()
    {
        var image = GuestImage.Default;
        string receiverInitrd = image.WithTestScript(ReceiverScript);
        string senderInitrd = image.WithTestScript(SenderScript);
        try
        {
            int port = FreeTcpPort();
            var endPoint = new IPEndPoint(IPAddress.Loopback, port);
            var listen = NetSpec.Parse($"stream,listen={endPoint}");
            var connect = NetSpec.Parse($"stream,connect={endPoint}");
            Assert.NotEqual(listen.Mac, connect.Mac); // each VM gets its own MAC by default

            // The connecting VM starts first: it must wait for the listener rather than give up.
            var sender = StartVm(image.Kernel, senderInitrd, connect);
            await Task.Delay(2000);
            var receiver = StartVm(image.Kernel, receiverInitrd, listen);
            var (receiverExit, receiverConsole) = await receiver;
            var (senderExit, senderConsole) = await sender;
            string both = $"--- listening VM:\n{receiverConsole}\n--- connecting VM:\n{senderConsole}";

            Assert.True(receiverExit.Kind == VmExitKind.PowerOff, $"the listening VM did not power off: {receiverExit.Message}\n{both}");
            Assert.True(senderExit.Kind == VmExitKind.PowerOff, $"the connecting VM did not power off: {senderExit.Message}\n{both}");
            Assert.True(receiverConsole.Contains("reply-from=10.0.2.2"), both);
            Assert.Contains("reply-from=10.0.2.1", senderConsole);
            var sent = Regex.Match(senderConsole, @"sent=([0-9a-f]{64}) bytes=(\d+)");
            Assert.True(sent.Success, both);
            Assert.True(receiverConsole.Contains($"received={sent.Groups[1].Value} bytes={sent.Groups[2].Value}", StringComparison.Ordinal), both);
            Assert.True(senderConsole.Contains("peer-said=bye", StringComparison.Ordinal), both);
            // The guests see the MACs the host gave them.
            Assert.Contains($"mac={FormatMac(listen.Mac)}", receiverConsole);
            Assert.Contains($"mac={FormatMac(connect.Mac)}", senderConsole);
        }
        finally
        {
            File.Delete(receiverInitrd);
            File.Delete(senderInitrd);
        }
    }

    /// <summary>Boots a guest with one NIC on its own thread (the VM's vCPU loop blocks it).</summary>
    internal static Task<(VmExit Exit, string Console)> StartVm(string kernel, string initrd, NetSpec net) =>
        Task.Factory.StartNew(() => BusyboxTests.Boot(kernel, initrd, "console=ttyS0 quiet", timeoutSeconds: 240, customize: c => c with { Net = net }),
            TaskCreationOptions.LongRunning);

    internal static string FormatMac(byte[] mac) => string.Join(':', mac.Select(b => b.ToString("x2")));

    /// <summary>A TCP port nobody listens on right now (the OS picks it).</summary>
    internal static int FreeTcpPort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
