using System.Buffers.Binary;
using SharpVisor.Core;

namespace SharpVisor.Devices.Virtio;

/// <summary>
/// What a virtio device asks of the transport that carries it (virtio-pci today; MMIO or
/// vhost-user would implement the same). Every member but <see cref="Kick"/> and
/// <see cref="FlushInterrupts"/> is called under the device's <see cref="VirtioDevice.Gate"/>.
/// </summary>
public interface IVirtioTransport
{
    /// <summary>DRIVER_OK is set and DEVICE_NEEDS_RESET is not: the device may use its queues (3.1.1).</summary>
    bool DriverOkLocked { get; }

    /// <summary>The feature bits the driver wrote (final once FEATURES_OK is set, 3.1.1).</summary>
    ulong DriverFeaturesLocked { get; }

    /// <summary>Runs queue <paramref name="queue"/> now (takes the lock, sends the interrupts): input arrived.</summary>
    void Kick(int queue);

    /// <summary>The device configuration changed: bump config_generation and, once the driver runs, record a configuration change interrupt.</summary>
    void DeviceConfigChangedLocked();

    /// <summary>Sends the interrupts recorded under the lock. Call without holding the lock.</summary>
    void FlushInterrupts();

    /// <summary>Where the device sits, for log messages ("00:04.0" on PCI).</summary>
    string Location { get; }

    /// <summary>The log of the VM the transport is attached to.</summary>
    Log Log { get; }
}

/// <summary>
/// A virtio device apart from how it reaches the guest (virtio 1.2, 2 and 5): its type, the
/// feature bits it offers, its configuration bytes, its queues (how many, how large) and what it
/// does with a descriptor chain, plus reset and activation. A transport (<see cref="VirtioPciTransport"/>)
/// holds one and does the rest: registers, feature negotiation, status, queue setup, interrupts.
/// This is the split of Firecracker's <c>VirtioDevice</c> trait and its MMIO/PCI transports.
/// </summary>
/// <remarks>
/// <para>One lock, <see cref="Gate"/>, guards the device and its transport's registers and queues:
/// a request runs under it, a reset takes it and so waits for in-flight requests. Hooks named
/// "...Locked" or documented as such are called with it held.</para>
/// <para>Saving: the transport saves the device's part through <see cref="SaveDeviceState"/> and
/// validates (<see cref="CheckDeviceState"/>) before anything is applied (<see cref="ApplyDeviceState"/>),
/// so one routine saves any virtio device.</para>
/// </remarks>
public abstract class VirtioDevice
{
    /// <summary>At most this many queues (one MSI-X vector each, plus the configuration vector).</summary>
    public const int MaxQueues = 64;

    IVirtioTransport? _transport;

    /// <summary>The device lock: guards device state and the transport's registers and queues.</summary>
    protected internal readonly Lock Gate = new();

    /// <summary>Device-specific configuration (virtio 1.2, 4.1.4.6 / 5.x.4), little-endian, as the driver reads it.</summary>
    protected readonly byte[] DeviceConfig;

    /// <param name="name">Short name for logs and counters ("blk").</param>
    /// <param name="pciClassCode">The class code a PCI transport shows (virtio 4.1.2 leaves it to the device type).</param>
    /// <param name="deviceFeatures">Device-specific feature bits (0-23); the transport adds its own.</param>
    protected VirtioDevice(string name, VirtioDeviceType type, uint pciClassCode, int queueCount, ushort maxQueueSize,
        ulong deviceFeatures, int deviceConfigSize)
    {
        if (queueCount is < 1 or > MaxQueues)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(queueCount), "1 to 64 queues");
        }
        Name = name;
        DeviceType = type;
        PciClassCode = pciClassCode;
        QueueCount = queueCount;
        MaxQueueSize = maxQueueSize;
        DeviceFeatures = deviceFeatures;
        DeviceConfig = new byte[deviceConfigSize];
    }

    public string Name { get; }
    public VirtioDeviceType DeviceType { get; }
    public uint PciClassCode { get; }
    public int QueueCount { get; }
    public ushort MaxQueueSize { get; }
    /// <summary>The device-specific feature bits offered (the transport adds VERSION_1 and the ring features).</summary>
    public ulong DeviceFeatures { get; }
    public int DeviceConfigSize => DeviceConfig.Length;

    /// <summary>This device's own counters (the transport adds its and the PCI function's).</summary>
    public virtual IEnumerable<Counter> Counters => [];

    /// <summary>Called once by the transport that takes this device.</summary>
    internal void Bind(IVirtioTransport transport)
    {
        if (_transport is not null)
        {
            ThrowHelper.InvalidOperation($"virtio {Name}: the device already has a transport");
        }
        _transport = transport;
    }

    // ---- transport services for subclasses ----

    /// <summary>Where the device sits, for log messages.</summary>
    protected string Location => _transport?.Location ?? "--:--.-";

    /// <summary>The log of the VM the device's transport is attached to.</summary>
    /// <remarks>A device with no transport has no queues, so it has nothing to say: its lines go nowhere.</remarks>
    protected Log Log => _transport?.Log ?? new Log(TextWriter.Null);

    /// <summary>DRIVER_OK set and no DEVICE_NEEDS_RESET (under <see cref="Gate"/>).</summary>
    protected bool DriverOk => _transport?.DriverOkLocked ?? false;

    /// <summary>Whether the driver accepted feature bit <paramref name="feature"/> (under <see cref="Gate"/>).</summary>
    protected bool IsNegotiated(int feature) => ((_transport?.DriverFeaturesLocked ?? 0) & 1UL << feature) != 0;

    /// <summary>Processes queue <paramref name="queue"/> from a non-register path (input arrived). Without <see cref="Gate"/>.</summary>
    protected void Kick(int queue) => _transport?.Kick(queue);

    /// <summary>The device changed its configuration (under <see cref="Gate"/>); then <see cref="FlushInterrupts"/> after releasing it.</summary>
    protected void DeviceConfigChangedLocked() => _transport?.DeviceConfigChangedLocked();

    /// <summary>Sends the interrupts recorded under <see cref="Gate"/>. Call without holding it.</summary>
    protected void FlushInterrupts() => _transport?.FlushInterrupts();

    // ---- hooks for the transport (all under Gate) ----

    /// <summary>
    /// Processes one request popped from queue <paramref name="queue"/>. Write the response through
    /// <paramref name="chain"/>; return false when the request is malformed (the queue then needs
    /// a reset). A failed buffer access (<see cref="DescriptorChain.Faulted"/>) is handled by the caller.
    /// </summary>
    protected internal abstract bool HandleRequest(int queue, DescriptorChain chain);

    /// <summary>Whether queue <paramref name="queue"/> should pop a buffer now (a receive queue only does with data to deliver).</summary>
    protected internal virtual bool WantsBuffers(int queue) => true;

    /// <summary>Extra feature validation at FEATURES_OK.</summary>
    protected internal virtual bool AcceptFeatures(ulong features) => true;

    /// <summary>Device reset (status 0, virtio 1.2, 2.4): drop device state tied to the driver.</summary>
    protected internal virtual void Reset()
    {
    }

    /// <summary>The driver set DRIVER_OK: the device is live.</summary>
    protected internal virtual void Activate()
    {
    }

    /// <summary>Reads the device configuration (the transport checked the range).</summary>
    internal ulong ReadConfig(int offset, int size)
    {
        var bytes = DeviceConfig.AsSpan(offset);
        return size switch
        {
            1 => bytes[0],
            2 => BinaryPrimitives.ReadUInt16LittleEndian(bytes),
            4 => BinaryPrimitives.ReadUInt32LittleEndian(bytes),
            _ => BinaryPrimitives.ReadUInt64LittleEndian(bytes),
        };
    }

    /// <summary>A driver write to the device configuration; returns false when nothing there is writable (counted by the transport).</summary>
    protected internal virtual bool WriteConfig(int offset, int size, ulong value) => false;

    // ---- state (under Gate) ----

    /// <summary>The device's own state: its configuration bytes and what it holds for the driver.</summary>
    protected internal virtual VirtioDeviceState SaveDeviceState() => new() { Config = DeviceConfig.ToArray() };

    /// <summary>
    /// Refuses (<see cref="InvalidStateException"/>) a device state this device cannot take. The
    /// default accepts only configuration bytes equal to the device's own: nothing in them is
    /// guest-writable, so a difference means a different device (another disk size, say).
    /// </summary>
    protected internal virtual void CheckDeviceState(VirtioDeviceState state, string component)
    {
        InvalidStateException.CheckVersion(state.Version, VirtioDeviceState.CurrentVersion, component);
        var config = state.Config ?? throw new InvalidStateException(component, "the device configuration is missing");
        InvalidStateException.Check(config.Length == DeviceConfig.Length, component,
            $"device configuration has {config.Length} bytes, the {Name} device has {DeviceConfig.Length}");
        InvalidStateException.Check(config.AsSpan().SequenceEqual(DeviceConfig), component,
            $"device configuration differs from this {Name} device's (not the device that was saved)");
        InvalidStateException.Check(state.Net is null && state.Console is null && state.Entropy is null, component, $"state of another device type than {Name}");
    }

    /// <summary>Applies a state <see cref="CheckDeviceState"/> accepted.</summary>
    protected internal virtual void ApplyDeviceState(VirtioDeviceState state) => state.Config.CopyTo(DeviceConfig, 0);

    /// <summary>After a restore, outside <see cref="Gate"/>: reconcile with the host side (a link that changed meanwhile).</summary>
    protected internal virtual void Restored()
    {
    }
}
