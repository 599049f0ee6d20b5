namespace SharpVisor.Devices.Virtio;

/// <summary>
/// A split virtqueue's state (virtio 1.2, 2.7), as rust-vmm virtio-queue's <c>QueueState</c>:
/// what the driver programmed through the common configuration and where the device stands.
/// </summary>
public sealed record VirtqueueState
{
    public const int CurrentVersion = 1;
    public int Version { get; init; } = CurrentVersion;
    /// <summary>queue_size as programmed (any value while not ready; checked when the queue is enabled).</summary>
    public ushort Size { get; init; }
    /// <summary>queue_enable: the queue is live.</summary>
    public bool Ready { get; init; }
    public ulong DescriptorTable { get; init; }
    /// <summary>queue_driver: the available ring.</summary>
    public ulong DriverArea { get; init; }
    /// <summary>queue_device: the used ring.</summary>
    public ulong DeviceArea { get; init; }
    /// <summary>Index of the next available-ring entry the device will take.</summary>
    public ushort NextAvail { get; init; }
    /// <summary>used.idx as the device last published it.</summary>
    public ushort NextUsed { get; init; }
    /// <summary>VIRTIO_F_EVENT_IDX was negotiated when the queue was enabled (2.7.10).</summary>
    public bool EventIndex { get; init; }
    /// <summary>VIRTIO_F_INDIRECT_DESC was negotiated when the queue was enabled (2.7.5.3).</summary>
    public bool IndirectDescriptors { get; init; }
    /// <summary>queue_msix_vector (0xFFFF: none).</summary>
    public ushort MsixVector { get; init; } = VirtioPci.NoVector;
    /// <summary>Why the queue stopped (then the device is in DEVICE_NEEDS_RESET), or None.</summary>
    public VirtqueueError Error { get; init; }
}

/// <summary>A virtio device's own state (the transport's is in <see cref="VirtioPciState"/>).</summary>
public sealed record VirtioDeviceState
{
    public const int CurrentVersion = 1;
    public int Version { get; init; } = CurrentVersion;
    /// <summary>The device configuration bytes as the driver reads them (virtio-net: MAC and link status).</summary>
    public required byte[] Config { get; init; }
    /// <summary>virtio-net only: frames received from the backend and not yet given to the guest.</summary>
    public VirtioNetState? Net { get; init; }
    /// <summary>virtio-console only: input not yet given to the guest.</summary>
    public VirtioConsoleState? Console { get; init; }
    /// <summary>virtio-rng only: where its entropy source stands.</summary>
    public VirtioEntropyState? Entropy { get; init; }
}

public sealed record VirtioNetState
{
    /// <summary>Frames waiting for a receive buffer, oldest first (at most <see cref="VirtioNet.ReceiveBacklog"/>).</summary>
    public required byte[][] ReceiveBacklog { get; init; }
}

public sealed record VirtioConsoleState
{
    /// <summary>Host input waiting for a receive buffer, oldest first (at most <see cref="VirtioConsole.InputCapacity"/> bytes).</summary>
    public required byte[] PendingInput { get; init; }
}

public sealed record VirtioEntropyState
{
    public const int CurrentVersion = 1;
    public int Version { get; init; } = CurrentVersion;
    /// <summary>
    /// The seeded generator's state words (xoshiro256**, <see cref="SeededEntropySource"/>), so a
    /// restored device goes on with the same bytes; null with host randomness, which has no position.
    /// </summary>
    public ulong[]? Generator { get; init; }
}

/// <summary>
/// Everything the guest can observe of a virtio device on the PCI transport: the PCI function
/// (configuration space, MSI-X table and PBA, INTx), the transport's registers (virtio 1.2, 4.1.4.3),
/// each queue, and the device's own state.
/// </summary>
public sealed record VirtioPciState
{
    public const int CurrentVersion = 1;
    public int Version { get; init; } = CurrentVersion;
    public required Pci.PciFunctionState Function { get; init; }
    public VirtioDeviceType DeviceType { get; init; }
    /// <summary>device_feature as offered (must be what the restoring device offers).</summary>
    public ulong OfferedFeatures { get; init; }
    /// <summary>driver_feature as written; the accepted set once FEATURES_OK is in <see cref="Status"/>.</summary>
    public ulong DriverFeatures { get; init; }
    public uint DeviceFeatureSelect { get; init; }
    public uint DriverFeatureSelect { get; init; }
    /// <summary>device_status (2.1).</summary>
    public byte Status { get; init; }
    public byte ConfigGeneration { get; init; }
    /// <summary>ISR status (4.1.4.5): bit 0 queue, bit 1 configuration.</summary>
    public byte Isr { get; init; }
    public ushort QueueSelect { get; init; }
    public ushort ConfigMsixVector { get; init; } = VirtioPci.NoVector;
    public required VirtqueueState[] Queues { get; init; }
    public required VirtioDeviceState Device { get; init; }
}
