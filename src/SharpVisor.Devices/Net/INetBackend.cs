using SharpVisor.Core;

namespace SharpVisor.Devices.Net;

/// <summary>Receives Ethernet frames from a network backend (on the backend's thread).</summary>
public delegate void NetFrameReceiver(ReadOnlySpan<byte> frame);

/// <summary>Told when a network backend's link comes up (a peer connected) or goes down (it left).</summary>
public delegate void NetLinkChanged(bool up);

/// <summary>
/// Where a network device's frames go: a stream socket to a peer VM, or a host TAP device.
/// Backends know nothing of the device model in front of them (virtio-net today).
/// </summary>
public interface INetBackend : IDisposable
{
    /// <summary>
    /// Sets the receiver of incoming frames and the link-state listener; called once, before any
    /// frame flows. The link is down until the backend reports it up (it may do so within Start).
    /// </summary>
    /// <remarks>
    /// Call both from the backend's own reading thread, holding no lock <see cref="Send"/> takes:
    /// while the VM is paused they block until it resumes, and the backend then reads nothing more,
    /// so the host kernel holds what arrives (a socket's receive buffer, a TAP interface's queue).
    /// </remarks>
    void Start(NetFrameReceiver receiver, NetLinkChanged linkChanged);

    /// <summary>Sends one Ethernet frame (without FCS). Must not block for long: drop instead.</summary>
    void Send(ReadOnlySpan<byte> frame);

    /// <summary>The backend's own counters; the NIC reports them with its own.</summary>
    IEnumerable<Counter> Counters => [];
}

/// <summary>Limits every backend and network device agrees on.</summary>
public static class EthernetFrame
{
    /// <summary>Largest frame carried: a 9000-byte jumbo payload plus Ethernet and VLAN headers (no FCS).</summary>
    public const int MaxLength = 9018;
}
