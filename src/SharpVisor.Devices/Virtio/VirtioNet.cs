using System.Buffers.Binary;
using SharpVisor.Core;
using SharpVisor.Devices.Net;

namespace SharpVisor.Devices.Virtio;

/// <summary>
/// virtio-net (virtio 1.2, 5.1) with one receive and one transmit queue, a MAC address in the
/// configuration (VIRTIO_NET_F_MAC), link status (VIRTIO_NET_F_STATUS: up while the backend has
/// a peer; a change sends a configuration change interrupt, on which Linux's virtnet_config_changed_work
/// re-reads the status and switches the carrier) and no offloads: every frame carries the 12-byte struct virtio_net_hdr of VERSION_1 (5.1.6), which
/// the device ignores on transmit and writes as "no checksum, no GSO, one buffer" on receive.
/// </summary>
/// <remarks>
/// Frames and link changes come on the backend's thread. While the VM is paused (<see cref="Pause"/>)
/// that thread waits at the device's <see cref="DeliveryGate"/> before it changes anything, so it
/// stops reading and the host kernel holds what arrives (a socket's receive buffer, a TAP queue);
/// after <see cref="Resume"/> it delivers in order. <see cref="Pause"/> returns only after a frame
/// being delivered is complete: in the ring, the used index and the interrupt sent.
/// </remarks>
public sealed class VirtioNet : VirtioDevice, IPausable, IDisposable
{
    public const int FeatureMac = 5;
    public const int FeatureStatus = 16;
    public const int ReceiveQueue = 0;
    public const int TransmitQueue = 1;
    public const int HeaderLength = 12;
    /// <summary>5.1.4 status field bit VIRTIO_NET_S_LINK_UP.</summary>
    public const ushort StatusLinkUp = 1;
    /// <summary>Offset of the le16 status field in struct virtio_net_config (5.1.4).</summary>
    public const int StatusOffset = 6;
    /// <summary>Largest frame carried: a 9000-byte jumbo payload plus Ethernet and VLAN headers.</summary>
    public const int MaxFrameLength = EthernetFrame.MaxLength;
    /// <summary>Frames held while the guest has no receive buffer; beyond this they are dropped.</summary>
    public const int ReceiveBacklog = 128;

    readonly INetBackend _backend;
    readonly DeliveryGate _delivery = new();
    readonly byte[] _txFrame = new byte[MaxFrameLength];
    readonly byte[][] _rxFrames = new byte[ReceiveBacklog][];
    readonly int[] _rxLengths = new int[ReceiveBacklog];
    int _rxHead;
    int _rxCount;
    /// <summary>The link as the backend last reported it (the status field follows it, except right after a restore).</summary>
    bool _backendLinkUp;

    public readonly Counter TxFrames = new("virtio.net.tx_frames");
    public readonly Counter RxFrames = new("virtio.net.rx_frames");
    public readonly Counter TxDropped = new("virtio.net.tx_dropped");
    public readonly Counter RxDropped = new("virtio.net.rx_dropped");
    public readonly Counter LinkChanges = new("virtio.net.link_changes");

    public VirtioNet(INetBackend backend, ReadOnlySpan<byte> mac)
        : base("net", VirtioDeviceType.Network, 0x02_00_00, 2, 256, 1UL << FeatureMac | 1UL << FeatureStatus, 8)
    {
        if (mac.Length != 6)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(mac), "a MAC address has 6 bytes");
        }
        for (int i = 0; i < ReceiveBacklog; i++)
        {
            _rxFrames[i] = new byte[MaxFrameLength];
        }
        // 5.1.4 struct virtio_net_config: mac[6], le16 status; the link starts down (status 0).
        mac.CopyTo(DeviceConfig);
        _backend = backend;
        _backend.Start(Receive, BackendLinkChanged);
    }

    public override IEnumerable<Counter> Counters => [.. base.Counters, TxFrames, RxFrames, TxDropped, RxDropped, LinkChanges, .. _backend.Counters];

    /// <summary>Whether the status field says VIRTIO_NET_S_LINK_UP.</summary>
    public bool LinkUp
    {
        get { lock (Gate) { return (BinaryPrimitives.ReadUInt16LittleEndian(DeviceConfig.AsSpan(StatusOffset)) & StatusLinkUp) != 0; } }
    }

    /// <summary>Holds the backend's thread before it delivers a frame or a link change, until <see cref="Resume"/>.</summary>
    public void Pause() => _delivery.Pause();

    public void Resume() => _delivery.Resume();

    /// <summary>The backend's link came up or went down (on its thread).</summary>
    void BackendLinkChanged(bool up)
    {
        if (!_delivery.Enter())
        {
            return; // disposed
        }
        try
        {
            SetLink(up);
        }
        finally
        {
            _delivery.Exit();
        }
    }

    /// <summary>Updates the status field and tells the driver.</summary>
    void SetLink(bool up)
    {
        lock (Gate)
        {
            _backendLinkUp = up;
            ushort status = up ? StatusLinkUp : (ushort)0;
            if (BinaryPrimitives.ReadUInt16LittleEndian(DeviceConfig.AsSpan(StatusOffset)) == status)
            {
                return;
            }
            BinaryPrimitives.WriteUInt16LittleEndian(DeviceConfig.AsSpan(StatusOffset), status);
            LinkChanges.Increment();
            DeviceConfigChangedLocked();
        }
        FlushInterrupts();
    }

    /// <summary>A frame from the backend (on its thread).</summary>
    void Receive(ReadOnlySpan<byte> frame)
    {
        if (!_delivery.Enter())
        {
            return; // disposed: the frame is lost with the device
        }
        try
        {
            lock (Gate)
            {
                if (frame.Length > MaxFrameLength || _rxCount == ReceiveBacklog || !DriverOk)
                {
                    RxDropped.Increment();
                    return;
                }
                int slot = (_rxHead + _rxCount) % ReceiveBacklog;
                frame.CopyTo(_rxFrames[slot]);
                _rxLengths[slot] = frame.Length;
                _rxCount++;
            }
            Kick(ReceiveQueue);
        }
        finally
        {
            _delivery.Exit();
        }
    }

    protected internal override bool WantsBuffers(int queue) => queue != ReceiveQueue || _rxCount > 0;

    protected internal override void Reset()
    {
        _rxHead = 0;
        _rxCount = 0;
    }

    protected internal override bool HandleRequest(int queue, DescriptorChain chain)
    {
        if (queue == TransmitQueue)
        {
            // 5.1.6.2: header then the frame, all device-readable.
            if (chain.ReadableLength < HeaderLength)
            {
                return false;
            }
            uint length = chain.ReadableLength - HeaderLength;
            if (length > MaxFrameLength)
            {
                TxDropped.Increment();
                return true;
            }
            if (!chain.Read(HeaderLength, _txFrame.AsSpan(0, (int)length)))
            {
                return true; // Faulted: the caller breaks the queue
            }
            TxFrames.Increment();
            _backend.Send(_txFrame.AsSpan(0, (int)length));
            return true;
        }

        var frame = _rxFrames[_rxHead].AsSpan(0, _rxLengths[_rxHead]);
        _rxHead = (_rxHead + 1) % ReceiveBacklog;
        _rxCount--;
        if (chain.WritableLength < HeaderLength + (uint)frame.Length)
        {
            // Without VIRTIO_NET_F_MRG_RXBUF a frame must fit one buffer (5.1.6.3.1); Linux drops
            // a completion this short as a length error and reposts the buffer.
            RxDropped.Increment();
            return true;
        }
        Span<byte> header = stackalloc byte[HeaderLength];
        header.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(header[10..], 1); // num_buffers
        if (chain.Write(0, header) && chain.Write(HeaderLength, frame))
        {
            RxFrames.Increment();
        }
        return true;
    }

    // ---- state: MAC and link status (the configuration), frames held for the guest ----

    protected internal override VirtioDeviceState SaveDeviceState()
    {
        var frames = new byte[_rxCount][];
        for (int i = 0; i < _rxCount; i++)
        {
            int slot = (_rxHead + i) % ReceiveBacklog;
            frames[i] = _rxFrames[slot].AsSpan(0, _rxLengths[slot]).ToArray();
        }
        return base.SaveDeviceState() with { Net = new VirtioNetState { ReceiveBacklog = frames } };
    }

    /// <summary>
    /// Accepts any MAC address (it is guest-visible state, so it moves with the VM) and a status
    /// field with at most VIRTIO_NET_S_LINK_UP; at most <see cref="ReceiveBacklog"/> frames of at
    /// most <see cref="MaxFrameLength"/> bytes.
    /// </summary>
    protected internal override void CheckDeviceState(VirtioDeviceState state, string component)
    {
        InvalidStateException.CheckVersion(state.Version, VirtioDeviceState.CurrentVersion, component);
        var config = state.Config ?? throw new InvalidStateException(component, "the device configuration is missing");
        InvalidStateException.Check(config.Length == DeviceConfig.Length, component,
            $"device configuration has {config.Length} bytes, virtio-net's has {DeviceConfig.Length}");
        ushort status = BinaryPrimitives.ReadUInt16LittleEndian(config.AsSpan(StatusOffset));
        InvalidStateException.Check((status & ~StatusLinkUp) == 0, component, $"link status 0x{status:x4} has bits other than LINK_UP");
        InvalidStateException.Check(state.Console is null && state.Entropy is null, component, "state of another device type than virtio-net");
        var frames = state.Net?.ReceiveBacklog ?? throw new InvalidStateException(component, "the receive backlog is missing");
        InvalidStateException.Check(frames.Length <= ReceiveBacklog, component, $"{frames.Length} frames held, at most {ReceiveBacklog} are kept");
        foreach (var frame in frames)
        {
            InvalidStateException.Check(frame is not null && frame.Length <= MaxFrameLength, component,
                $"a held frame of {frame?.Length ?? -1} bytes (at most {MaxFrameLength})");
        }
    }

    protected internal override void ApplyDeviceState(VirtioDeviceState state)
    {
        base.ApplyDeviceState(state);
        var frames = state.Net!.ReceiveBacklog;
        for (int i = 0; i < frames.Length; i++)
        {
            frames[i].CopyTo(_rxFrames[i], 0);
            _rxLengths[i] = frames[i].Length;
        }
        _rxHead = 0;
        _rxCount = frames.Length;
    }

    /// <summary>
    /// The restored link status is what the guest last saw; if this device's backend says otherwise
    /// (the peer of the new process is not there yet), the driver is told as for any link change.
    /// </summary>
    protected internal override void Restored()
    {
        bool up;
        lock (Gate)
        {
            up = _backendLinkUp;
        }
        SetLink(up);
    }

    public void Dispose()
    {
        _delivery.Close(); // a backend thread held by a pause gives up its frame and sees its stop request
        _backend.Dispose();
    }
}
