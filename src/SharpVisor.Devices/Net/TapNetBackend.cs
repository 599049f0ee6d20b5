using System.Runtime.InteropServices;
using System.Text;
using SharpVisor.Core;

namespace SharpVisor.Devices.Net;

/// <summary>
/// A network backend on a Linux TAP interface (Documentation/networking/tuntap.rst): the guest's
/// frames appear on a host interface, where the host can give it an address, bridge it or route it.
/// </summary>
/// <remarks>
/// <para>Opens /dev/net/tun and attaches with TUNSETIFF (IFF_TAP | IFF_NO_PI: whole Ethernet frames,
/// no packet-information prefix, no virtio-net header since no offload is offered). An interface of
/// that name that already exists (e.g. made with <c>ip tuntap add dev NAME mode tap user $USER</c>,
/// which needs no root to use) is attached to; otherwise the kernel creates one, which needs
/// CAP_NET_ADMIN and disappears when the VM ends.</para>
/// <para>The link is up from the start. A frame the host cannot take (the interface is down: EIO)
/// is dropped and counted. One reader thread polls the descriptor; no allocation per frame.</para>
/// </remarks>
public sealed unsafe partial class TapNetBackend : INetBackend
{
    // linux/if_tun.h
    const uint TunSetIff = 0x400454CA; // _IOW('T', 202, int)
    const short IffTap = 0x0002;
    const short IffNoPi = 0x1000;
    // linux/if.h: IFNAMSIZ, and struct ifreq is 40 bytes on x86-64 (name, then a 24-byte union).
    public const int MaxNameLength = 15;
    const int IfReqSize = 40;
    const int OpenReadWrite = 2, OpenCloseOnExec = 0x80000;
    const short PollIn = 1;
    const int ENOENT = 2, EPERM = 1, EINTR = 4, EIO = 5, EAGAIN = 11, EACCES = 13, EBUSY = 16, ENODEV = 19, EINVAL = 22;
    const string TunPath = "/dev/net/tun";

    /// <summary>The log of the VM whose NIC uses this backend.</summary>
    readonly Log Log;
    readonly Lock _fdGate = new();
    readonly byte[] _receiveBuffer = new byte[64 * 1024];
    int _fd;
    volatile bool _stopping;
    Thread? _thread;
    NetFrameReceiver? _receiver;

    public readonly Counter FramesDropped = new("net.tap.frames_dropped");
    public IEnumerable<Counter> Counters => [FramesDropped];

    TapNetBackend(int fd, string name, Log? log)
    {
        Log = log ?? new Log();
        _fd = fd;
        InterfaceName = name;
    }

    /// <summary>The host interface's name (as the kernel confirmed it).</summary>
    public string InterfaceName { get; }

    /// <summary>
    /// Attaches to TAP interface <paramref name="name"/>, creating it if it does not exist.
    /// Throws <see cref="UserErrorException"/> with the fix when that is not possible.
    /// </summary>
    public static TapNetBackend Open(string name, Log? log = null)
    {
        byte[] nameBytes = Encoding.ASCII.GetBytes(name);
        if (nameBytes.Length is 0 or > MaxNameLength)
        {
            throw new UserErrorException($"tap interface name '{name}' must have 1 to {MaxNameLength} characters");
        }
        int fd = open(TunPath, OpenReadWrite | OpenCloseOnExec);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new UserErrorException(errno switch
            {
                ENOENT or ENODEV => $"--net tap: {TunPath} is missing (load the tun module: modprobe tun)",
                EACCES or EPERM => $"--net tap: permission denied opening {TunPath}: run as root, or make the interface beforehand with 'sudo ip tuntap add dev {name} mode tap user $USER'",
                _ => $"--net tap: cannot open {TunPath}: {Marshal.GetPInvokeErrorMessage(errno)}",
            });
        }
        byte* ifr = stackalloc byte[IfReqSize];
        new Span<byte>(ifr, IfReqSize).Clear();
        nameBytes.CopyTo(new Span<byte>(ifr, MaxNameLength));
        *(short*)(ifr + 16) = IffTap | IffNoPi;
        if (ioctl(fd, TunSetIff, ifr) < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            close(fd);
            throw new UserErrorException(errno switch
            {
                EPERM or EACCES => $"--net tap: not allowed to create or attach tap interface '{name}': run as root, or make it beforehand with 'sudo ip tuntap add dev {name} mode tap user $USER'",
                EBUSY => $"--net tap: tap interface '{name}' is already in use by another program",
                EINVAL => $"--net tap: interface '{name}' exists but is not a single-queue TAP interface",
                _ => $"--net tap: cannot attach tap interface '{name}': {Marshal.GetPInvokeErrorMessage(errno)}",
            });
        }
        string confirmed = Encoding.ASCII.GetString(new ReadOnlySpan<byte>(ifr, MaxNameLength + 1)).TrimEnd('\0');
        return new TapNetBackend(fd, confirmed, log);
    }

    public void Start(NetFrameReceiver receiver, NetLinkChanged linkChanged)
    {
        _receiver = receiver;
        linkChanged(true);
        _thread = new Thread(Run) { IsBackground = true, Name = $"net-tap-{InterfaceName}" };
        _thread.Start();
    }

    public void Send(ReadOnlySpan<byte> frame)
    {
        lock (_fdGate)
        {
            if (_fd < 0)
            {
                FramesDropped.Increment();
                return;
            }
            nint written;
            fixed (byte* p = frame)
            {
                written = write(_fd, p, (nuint)frame.Length);
            }
            if (written != frame.Length)
            {
                // EIO: the host side of the interface is down; the frame is lost, as on a wire.
                FramesDropped.Increment();
                if (written < 0 && Marshal.GetLastPInvokeError() is not (EIO or EAGAIN))
                {
                    Log.Once($"net.tap.{InterfaceName}.write", "net", $"tap {InterfaceName}: write failed: {Marshal.GetLastPInvokeErrorMessage()}; frames are dropped");
                }
            }
        }
    }

    void Run()
    {
        var poll = new PollFd { Fd = _fd, Events = PollIn };
        fixed (byte* buffer = _receiveBuffer)
        {
            while (!_stopping)
            {
                // A bounded wait, so Dispose is seen within 100 ms without another wake-up channel.
                poll.Revents = 0;
                int ready = Poll(&poll, 1, 100);
                if (ready <= 0 || _stopping)
                {
                    if (ready < 0 && Marshal.GetLastPInvokeError() != EINTR)
                    {
                        Log.Warn("net", $"tap {InterfaceName}: poll failed: {Marshal.GetLastPInvokeErrorMessage()}; receiving stopped");
                        return;
                    }
                    continue;
                }
                nint n = read(_fd, buffer, (nuint)_receiveBuffer.Length);
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno is EINTR or EAGAIN)
                    {
                        continue;
                    }
                    Log.Warn("net", $"tap {InterfaceName}: read failed: {Marshal.GetPInvokeErrorMessage(errno)}; receiving stopped");
                    return;
                }
                if (n > EthernetFrame.MaxLength)
                {
                    FramesDropped.Increment(); // the host's MTU is above what the device carries
                    continue;
                }
                _receiver?.Invoke(new ReadOnlySpan<byte>(buffer, (int)n));
            }
        }
    }

    public void Dispose()
    {
        _stopping = true;
        _thread?.Join(2000);
        lock (_fdGate)
        {
            if (_fd >= 0)
            {
                close(_fd);
                _fd = -1;
            }
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, void* argument);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, void* buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, void* buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    private static partial int Poll(PollFd* fds, nuint count, int timeoutMs);
}
