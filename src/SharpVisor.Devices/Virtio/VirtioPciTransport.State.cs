using SharpVisor.Core;
using static SharpVisor.Devices.Virtio.VirtioPci;

namespace SharpVisor.Devices.Virtio;

public sealed partial class VirtioPciTransport : IPersistent<VirtioPciState>
{
    /// <summary>
    /// Saves any virtio device on this transport: the PCI function, the transport registers, every
    /// queue and the device's own state. Call with the VM paused (no vCPU or backend thread inside
    /// the device), so no interrupt is left recorded but unsent.
    /// </summary>
    public VirtioPciState SaveState()
    {
        var function = SaveFunctionState();
        lock (Gate)
        {
            var queues = new VirtqueueState[_queues.Length];
            for (int i = 0; i < queues.Length; i++)
            {
                queues[i] = _queues[i].SaveState();
            }
            return new VirtioPciState
            {
                Function = function,
                DeviceType = _device.DeviceType,
                OfferedFeatures = _offeredFeatures,
                DriverFeatures = _driverFeatures,
                DeviceFeatureSelect = _deviceFeatureSelect,
                DriverFeatureSelect = _driverFeatureSelect,
                Status = _status,
                ConfigGeneration = _configGeneration,
                Isr = _isr,
                QueueSelect = _queueSelect,
                ConfigMsixVector = _configVector,
                Queues = queues,
                Device = _device.SaveDeviceState(),
            };
        }
    }

    /// <summary>
    /// Restores a saved state whole, or refuses it (<see cref="InvalidStateException"/>) and changes
    /// nothing. Beyond each part's own checks (PCI function, queues, device): same device type and
    /// offered features; FEATURES_OK only with features the device accepts (a subset of those
    /// offered, VERSION_1 among them); MSI-X vectors inside the table or NO_VECTOR; ISR bits 0-1
    /// only; a stopped queue only with DEVICE_NEEDS_RESET; INTx asserted only with ISR bits set.
    /// </summary>
    public void RestoreState(VirtioPciState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        lock (Gate)
        {
            CheckLocked(state);
        }
        CheckFunctionState(state.Function);
        lock (Gate)
        {
            for (int i = 0; i < _queues.Length; i++)
            {
                _queues[i].Dma = Dma;
                _queues[i].Apply(state.Queues[i]);
            }
            _driverFeatures = state.DriverFeatures;
            _deviceFeatureSelect = state.DeviceFeatureSelect;
            _driverFeatureSelect = state.DriverFeatureSelect;
            _status = state.Status;
            _configGeneration = state.ConfigGeneration;
            _isr = state.Isr;
            _queueSelect = state.QueueSelect;
            _configVector = state.ConfigMsixVector;
            _pendingQueueInterrupts = 0;
            _pendingConfigInterrupt = false;
            _device.ApplyDeviceState(state.Device);
        }
        // Drives INTx and re-maps the BARs: outside the device lock, like any interrupt.
        ApplyFunctionState(state.Function);
        _device.Restored();
    }

    void CheckLocked(VirtioPciState state)
    {
        string component = $"virtio {Name}";
        InvalidStateException.CheckVersion(state.Version, VirtioPciState.CurrentVersion, component);
        var function = state.Function ?? throw new InvalidStateException(component, "the PCI function's state is missing");
        var queues = state.Queues ?? throw new InvalidStateException(component, "the queues' state is missing");
        var device = state.Device ?? throw new InvalidStateException(component, "the device's state is missing");
        InvalidStateException.Check(state.DeviceType == _device.DeviceType, component,
            $"device type {state.DeviceType} saved, this is {_device.DeviceType}");
        InvalidStateException.Check(state.OfferedFeatures == _offeredFeatures, component,
            $"offered features 0x{state.OfferedFeatures:x} saved, this device offers 0x{_offeredFeatures:x}");
        if ((state.Status & StatusFeaturesOk) != 0)
        {
            // 3.1.1: FEATURES_OK stays set only for a subset the device accepted (WriteStatusLocked).
            InvalidStateException.Check((state.DriverFeatures & ~_offeredFeatures) == 0, component,
                $"accepted features 0x{state.DriverFeatures:x} are not a subset of those offered (0x{_offeredFeatures:x})");
            InvalidStateException.Check((state.DriverFeatures & 1UL << FeatureVersion1) != 0, component,
                "FEATURES_OK without VIRTIO_F_VERSION_1");
            InvalidStateException.Check(_device.AcceptFeatures(state.DriverFeatures), component,
                $"the device does not accept features 0x{state.DriverFeatures:x}");
        }
        InvalidStateException.Check((state.Isr & ~(IsrQueue | IsrConfig)) == 0, component, $"ISR 0x{state.Isr:x2} has reserved bits");
        InvalidStateException.Check(!function.IntxAsserted || state.Isr != 0, component,
            "INTx asserted with ISR clear (reading ISR deasserts it)");
        int vectors = _queues.Length + 1;
        InvalidStateException.Check(state.ConfigMsixVector < vectors || state.ConfigMsixVector == NoVector, component,
            $"config MSI-X vector {state.ConfigMsixVector} is not below the table size {vectors}");
        InvalidStateException.Check(queues.Length == _queues.Length, component,
            $"{queues.Length} queues saved, the device has {_queues.Length}");
        for (int i = 0; i < _queues.Length; i++)
        {
            var q = queues[i] ?? throw new InvalidStateException(component, $"queue {i} is missing");
            string queue = $"{component} queue {i}";
            _queues[i].Check(q, queue);
            InvalidStateException.Check(q.MsixVector < vectors || q.MsixVector == NoVector, queue,
                $"MSI-X vector {q.MsixVector} is not below the table size {vectors}");
            // A broken queue always put the device in DEVICE_NEEDS_RESET (EnterNeedsResetLocked).
            InvalidStateException.Check(q.Error == VirtqueueError.None || (state.Status & StatusNeedsReset) != 0, queue,
                $"stopped with {q.Error} but the device status lacks DEVICE_NEEDS_RESET");
        }
        _device.CheckDeviceState(device, $"{component} device");
    }
}
