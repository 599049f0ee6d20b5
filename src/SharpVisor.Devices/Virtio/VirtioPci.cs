namespace SharpVisor.Devices.Virtio;

/// <summary>Constants of virtio 1.2 over PCI (sections 2.1, 4.1, 6).</summary>
public static class VirtioPci
{
    public const ushort VirtioVendorId = 0x1AF4;
    /// <summary>Modern (non-transitional) device IDs are 0x1040 + virtio device type (4.1.2).</summary>
    public const ushort ModernDeviceIdBase = 0x1040;
    /// <summary>"No vector" for config_msix_vector / queue_msix_vector (4.1.4.3, VIRTIO_MSI_NO_VECTOR).</summary>
    public const ushort NoVector = 0xFFFF;

    // Device status bits (2.1).
    public const byte StatusAcknowledge = 0x01;
    public const byte StatusDriver = 0x02;
    public const byte StatusDriverOk = 0x04;
    public const byte StatusFeaturesOk = 0x08;
    public const byte StatusNeedsReset = 0x40;
    public const byte StatusFailed = 0x80;

    // Reserved feature bits (6).
    public const int FeatureRingIndirectDesc = 28;
    public const int FeatureRingEventIdx = 29;
    public const int FeatureVersion1 = 32;
    public const int FeatureAccessPlatform = 33;

    // Vendor capability cfg_type values (4.1.4).
    public const byte CapCommonCfg = 1;
    public const byte CapNotifyCfg = 2;
    public const byte CapIsrCfg = 3;
    public const byte CapDeviceCfg = 4;
    public const byte CapPciCfg = 5;

    // ISR status bits (4.1.4.5).
    public const byte IsrQueue = 0x01;
    public const byte IsrConfig = 0x02;

    // Common configuration structure offsets (4.1.4.3, struct virtio_pci_common_cfg).
    public const int DeviceFeatureSelect = 0x00;
    public const int DeviceFeature = 0x04;
    public const int DriverFeatureSelect = 0x08;
    public const int DriverFeature = 0x0C;
    public const int ConfigMsixVector = 0x10;
    public const int NumQueues = 0x12;
    public const int DeviceStatus = 0x14;
    public const int ConfigGeneration = 0x15;
    public const int QueueSelect = 0x16;
    public const int QueueSize = 0x18;
    public const int QueueMsixVector = 0x1A;
    public const int QueueEnable = 0x1C;
    public const int QueueNotifyOff = 0x1E;
    public const int QueueDesc = 0x20;
    public const int QueueDriver = 0x28;
    public const int QueueDevice = 0x30;
    /// <summary>Size of the common configuration Linux 6.1 maps (up to queue_device).</summary>
    public const int CommonCfgLength = 0x38;

    // Where this implementation places the structures inside the 64-bit memory BAR.
    public const int BarIndex = 4;
    public const ulong BarSize = 0x8000;
    public const uint CommonCfgOffset = 0x0000;
    public const uint IsrOffset = 0x1000;
    public const uint DeviceCfgOffset = 0x2000;
    public const uint NotifyOffset = 0x3000;
    public const uint NotifyOffMultiplier = 4;
    public const uint MsixTableOffset = 0x4000;
    public const uint MsixPbaOffset = 0x6000;
}

/// <summary>Virtio device types (5).</summary>
public enum VirtioDeviceType : ushort
{
    Network = 1,
    Block = 2,
    Console = 3,
    EntropySource = 4,
}
