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
    /// The echo side (10.0.2.1) receives a file on TCP port 5000 while it pings its peer, prints
    /// the file's digest and sends the file back to port 5001, so bulk data crosses the link both ways.
    /// </summary>
    internal const string EchoScript = """
        #!/bin/sh
        echo "mac=$(cat /sys/class/net/eth0/address)"
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
        [ $n -lt 60 ] && echo "reply-from=10.0.2.2"
        wait $receiving
        echo "received=$(sha256sum < /tmp/received | cut -d' ' -f1) bytes=$(wc -c < /tmp/received)"
        n=0
        until nc 10.0.2.2 5001 < /tmp/received; do n=$((n + 1)); [ $n -ge 20 ] && break; sleep 1; done
        poweroff -f
        """;

    /// <summary>
    /// The sending side (10.0.2.2) pings, sends a file to port 5000 and receives it back on 5001
    /// (it stays up until then, so the echo side's pings find it too).
    /// </summary>
    internal const string SenderScript = """
        #!/bin/sh
        echo "mac=$(cat /sys/class/net/eth0/address)"
        ip link set eth0 up
        ip addr add 10.0.2.2/24 dev eth0
        seq 1 60000 > /tmp/data
        echo "sent=$(sha256sum < /tmp/data | cut -d' ' -f1) bytes=$(wc -c < /tmp/data)"
        mkfifo /tmp/hold; sleep 600 > /tmp/hold &
        timeout 180 nc -l -p 5001 < /tmp/hold > /tmp/back &
        listening=$!
        n=0
        until ping -c 1 -W 2 10.0.2.1 > /dev/null 2>&1; do
            n=$((n + 1)); [ $n -ge 60 ] && { echo "no-reply-from=10.0.2.1"; break; }; sleep 1
        done
        [ $n -lt 60 ] && echo "reply-from=10.0.2.1"
        n=0
        until nc 10.0.2.1 5000 < /tmp/data; do n=$((n + 1)); [ $n -ge 30 ] && break; sleep 1; done
        wait $listening
        echo "echoed=$(sha256sum < /tmp/back | cut -d' ' -f1) bytes=$(wc -c < /tmp/back)"
        poweroff -f
        """;

    /// <summary>Checks the two consoles: both pinged, and the digest is the same at every hop.</summary>
    static void AssertExchange(string echoName, string echoConsole, string senderName, string senderConsole)
    {
        string both = $"--- {echoName}:\n{echoConsole}\n--- {senderName}:\n{senderConsole}";
        Assert.True(echoConsole.Contains("reply-from=10.0.2.2", StringComparison.Ordinal), $"no ping reply\n{both}");
        Assert.True(senderConsole.Contains("reply-from=10.0.2.1", StringComparison.Ordinal), $"no ping reply\n{both}");
        var sent = Regex.Match(senderConsole, @"sent=([0-9a-f]{64}) bytes=(\d+)");
        Assert.True(sent.Success, both);
        string digest = $"{sent.Groups[1].Value} bytes={sent.Groups[2].Value}";
        Assert.True(echoConsole.Contains($"received={digest}", StringComparison.Ordinal), $"the file arrived damaged or not at all\n{both}");
        Assert.True(senderConsole.Contains($"echoed={digest}", StringComparison.Ordinal), $"the file came back damaged or not at all\n{both}");
    }

    [Fact]
    public async Task TwoVmsPingEachOtherAndCopyAFileOverTheStreamBackend()
    {
        var image = GuestImage.Default;
        string receiverInitrd = image.WithTestScript(EchoScript);
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
            Assert.True(receiverExit.Kind == VmExitKind.PowerOff, $"the listening VM did not power off: {receiverExit.Message}\n{receiverConsole}");
            Assert.True(senderExit.Kind == VmExitKind.PowerOff, $"the connecting VM did not power off: {senderExit.Message}\n{senderConsole}");
            AssertExchange("listening VM", receiverConsole, "connecting VM", senderConsole);
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

    /// <summary>
    /// Interoperability with QEMU's own virtio-net: a QEMU (TCG) guest serves a stream link with
    /// -netdev stream (QEMU 7.2; the same framing as -netdev socket), SharpVisor connects. Both boot
    /// the same kernel and initramfs; QEMU's guest echoes the file SharpVisor's guest sends.
    /// </summary>
    [QemuFact]
    public async Task SharpVisorAndQemuPingEachOtherAndCopyAFile()
    {
        var image = GuestImage.Default;
        string echoInitrd = image.WithTestScript(EchoScript);
        string senderInitrd = image.WithTestScript(SenderScript);
        try
        {
            int port = FreeTcpPort();
            var qemu = Qemu.Start(image.Kernel, echoInitrd, "console=ttyS0 quiet",
                "-netdev", $"stream,id=n0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
                "-device", "virtio-net-pci,netdev=n0");
            // SharpVisor may try before QEMU listens: its connect side retries.
            var sharpVisor = StartVm(image.Kernel, senderInitrd, NetSpec.StreamConnect(new IPEndPoint(IPAddress.Loopback, port)));
            var (exit, console) = await sharpVisor;
            string qemuConsole = await qemu.WaitAsync(TimeSpan.FromSeconds(120));
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the SharpVisor VM did not power off: {exit.Message}\n{console}\n--- QEMU:\n{qemuConsole}");
            AssertExchange("QEMU", qemuConsole, "SharpVisor", console);
            Assert.Contains("mac=52:54:00:12:34:56", qemuConsole); // QEMU's default MAC, unlike ours
        }
        finally
        {
            File.Delete(echoInitrd);
            File.Delete(senderInitrd);
        }
    }

    /// <summary>
    /// --net tap: the host gives its side of a TAP interface an address; the guest pings it and
    /// sends a file to a TCP listener in this test process, which checks the digest.
    /// </summary>
    [TapFact]
    public async Task GuestOnATapPingsTheHostAndSendsItAFile()
    {
        var image = GuestImage.Default;
        string name = $"svt{Random.Shared.Next():x8}"[..11];
        int subnet = Random.Shared.Next(1, 255);
        var hostIp = IPAddress.Parse($"10.213.{subnet}.1");
        RunIp("tuntap", "add", "dev", name, "mode", "tap");
        string? initrd = null;
        try
        {
            RunIp("addr", "add", $"{hostIp}/24", "dev", name);
            RunIp("link", "set", name, "up");
            using var listener = new TcpListener(hostIp, 0);
            listener.Start();
            int port = ((IPEndPoint)listener.LocalEndpoint).Port;
            initrd = image.WithTestScript($$"""
                #!/bin/sh
                ip link set eth0 up
                ip addr add 10.213.{{subnet}}.2/24 dev eth0
                n=0
                until ping -c 1 -W 2 {{hostIp}} > /dev/null 2>&1; do
                    n=$((n + 1)); [ $n -ge 30 ] && { echo "no-reply-from-host"; break; }; sleep 1
                done
                [ $n -lt 30 ] && echo "reply-from-host"
                seq 1 60000 > /tmp/data
                echo "sent=$(sha256sum < /tmp/data | cut -d' ' -f1)"
                n=0
                until nc {{hostIp}} {{port}} < /tmp/data; do n=$((n + 1)); [ $n -ge 10 ] && break; sleep 1; done
                poweroff -f
                """);
            var receive = Task.Run(async () =>
            {
                using var client = await listener.AcceptTcpClientAsync();
                using var data = new MemoryStream();
                await client.GetStream().CopyToAsync(data);
                return Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(data.ToArray())).ToLowerInvariant();
            });
            var (exit, console) = await StartVm(image.Kernel, initrd, NetSpec.Tap(name));
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{console}");
            Assert.True(console.Contains("reply-from-host", StringComparison.Ordinal), console);
            var sent = Regex.Match(console, "sent=([0-9a-f]{64})");
            Assert.True(sent.Success, console);
            Assert.Equal(sent.Groups[1].Value, await receive.WaitAsync(TimeSpan.FromSeconds(10)));
        }
        finally
        {
            RunIp("tuntap", "del", "dev", name, "mode", "tap");
            if (initrd is not null)
            {
                File.Delete(initrd);
            }
        }
    }

    internal static string? IpTool { get; } = new[] { "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip" }.FirstOrDefault(File.Exists);

    internal static void RunIp(params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(IpTool!) { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = System.Diagnostics.Process.Start(psi)!;
        string error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"ip {string.Join(' ', args)} failed: {error}");
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

/// <summary>A test that needs qemu-system-x86_64 (Debian: apt-get install qemu-system-x86); skipped with that message without it.</summary>
public sealed class QemuFactAttribute : FactAttribute
{
    public QemuFactAttribute()
    {
        if (Qemu.Path is null)
        {
            Skip = "qemu-system-x86_64 is not installed (Debian: apt-get install qemu-system-x86)";
        }
    }
}

/// <summary>A test that creates a TAP interface (root, /dev/net/tun, iproute2); skipped with the reason where that is not possible.</summary>
public sealed class TapFactAttribute : FactAttribute
{
    static readonly Lazy<string?> s_unavailable = new(() =>
    {
        if (NetworkTests.IpTool is null)
        {
            return "the 'ip' tool (iproute2) is not installed";
        }
        try
        {
            SharpVisor.Devices.Net.TapNetBackend.Open($"svp{Random.Shared.Next():x8}"[..11]).Dispose();
            return null;
        }
        catch (SharpVisor.Core.UserErrorException e)
        {
            return $"cannot create a TAP interface here ({e.Message})";
        }
    });

    public TapFactAttribute()
    {
        if (s_unavailable.Value is { } reason)
        {
            Skip = reason;
        }
    }
}

/// <summary>A QEMU TCG guest as a reference peer: serial console on stdout, no display, no reboot.</summary>
public sealed class Qemu
{
    readonly System.Diagnostics.Process _process;
    readonly System.Text.StringBuilder _output = new();

    Qemu(System.Diagnostics.Process process) => _process = process;

    /// <summary>qemu-system-x86_64 on PATH, or null.</summary>
    public static string? Path { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "")
        .Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Select(dir => System.IO.Path.Combine(dir, "qemu-system-x86_64"))
        .FirstOrDefault(File.Exists);

    public static Qemu Start(string kernel, string initrd, string append, params string[] extra)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(Path ?? throw new InvalidOperationException("qemu-system-x86_64 not found"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "-accel", "tcg", "-m", "256", "-smp", "1", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", kernel, "-initrd", initrd, "-append", append }.Concat(extra))
        {
            psi.ArgumentList.Add(a);
        }
        var qemu = new Qemu(System.Diagnostics.Process.Start(psi)!);
        qemu._process.OutputDataReceived += (_, e) => qemu.Append(e.Data);
        qemu._process.ErrorDataReceived += (_, e) => qemu.Append(e.Data);
        qemu._process.BeginOutputReadLine();
        qemu._process.BeginErrorReadLine();
        return qemu;
    }

    void Append(string? line)
    {
        if (line is not null)
        {
            lock (_output)
            {
                _output.Append(line).Append('\n');
            }
        }
    }

    /// <summary>Waits for QEMU to exit (the guest powers off), killing it after <paramref name="timeout"/>; returns its console.</summary>
    public async Task<string> WaitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            _process.Kill();
            await _process.WaitForExitAsync();
            Append("[test: QEMU killed after the timeout]");
        }
        _process.WaitForExit(); // drains the output readers
        lock (_output)
        {
            return _output.ToString();
        }
    }
}
