using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

public abstract partial class PciFunction : IPersistent<PciFunctionState>
{
    PciFunctionState IPersistent<PciFunctionState>.SaveState() => SaveFunctionState();

    void IPersistent<PciFunctionState>.RestoreState(PciFunctionState state) => RestoreFunctionState(state);

    /// <summary>The function's guest-visible state (call with the VM paused).</summary>
    public PciFunctionState SaveFunctionState()
    {
        bool intx;
        lock (_intxGate)
        {
            intx = _intxRequested;
        }
        lock (_configLock)
        {
            return new PciFunctionState
            {
                Config = _config.ToArray(),
                MsixTable = _msixTable.ToArray(),
                MsixPba = _msixPba.ToArray(),
                IntxAsserted = intx,
            };
        }
    }

    /// <summary>
    /// Checks <paramref name="state"/> and, if it is acceptable, applies it: configuration space,
    /// MSI-X table and PBA, INTx; then the bus re-maps the BARs, the INTx line is driven again and
    /// ATS follows its Enable bit. Nothing pending is delivered (at a pause point a pending vector is masked).
    /// </summary>
    /// <exception cref="InvalidStateException">Something is out of range; the function is unchanged.</exception>
    public void RestoreFunctionState(PciFunctionState state)
    {
        CheckFunctionState(state);
        ApplyFunctionState(state);
    }

    /// <summary>
    /// Refuses a state this function could not be in: only bits software can write (the write
    /// masks), RW1C bits and device-set bits (Interrupt Status, the MSI Pending bit) may differ from
    /// this function's own values, so IDs, BAR types, the capability list and every read-only field
    /// (MSI-X Table Size, ...) must be identical.
    /// </summary>
    protected void CheckFunctionState(PciFunctionState state)
    {
        string component = $"pci {Name}";
        InvalidStateException.CheckVersion(state.Version, PciFunctionState.CurrentVersion, component);
        byte[] config = state.Config ?? throw new InvalidStateException(component, "configuration space is missing");
        byte[] table = state.MsixTable ?? throw new InvalidStateException(component, "MSI-X table is missing");
        byte[] pba = state.MsixPba ?? throw new InvalidStateException(component, "MSI-X PBA is missing");
        InvalidStateException.Check(config.Length == PciConfig.ExtendedSize, component,
            $"configuration space has {config.Length} bytes, not {PciConfig.ExtendedSize}");
        InvalidStateException.Check(table.Length == _msixTable.Length, component,
            $"MSI-X table has {table.Length} bytes, this function's has {_msixTable.Length}");
        InvalidStateException.Check(pba.Length == _msixPba.Length, component,
            $"MSI-X PBA has {pba.Length} bytes, this function's has {_msixPba.Length}");
        lock (_configLock)
        {
            for (int o = 0; o < PciConfig.ExtendedSize; o++)
            {
                int mutable = _writable[o] | _writeOneToClear[o] | DeviceSetBits(o);
                InvalidStateException.Check(((config[o] ^ _config[o]) & ~mutable) == 0, component,
                    $"configuration byte 0x{o:x3} is 0x{config[o]:x2}, but its read-only bits are fixed at 0x{_config[o] & ~mutable & 0xFF:x2} here");
            }
            if (_pmCapability != 0)
            {
                // The write path discards D1/D2 (unsupported), so only D0 and D3hot are reachable.
                InvalidStateException.Check((config[_pmCapability + 4] & 3) is 0 or 3, component, "power state D1/D2 is not supported");
            }
        }
        bool interruptStatus = (config[PciConfig.Status] & (byte)PciStatus.InterruptStatus) != 0;
        InvalidStateException.Check(interruptStatus == state.IntxAsserted, component,
            "status Interrupt Status disagrees with the INTx condition");
        for (int v = 0; v < _msixVectors; v++)
        {
            // PCI 3.0, 6.8.2.9 Vector Control: only the Mask Bit is defined (the table write path keeps the rest 0).
            int control = v * 16 + 12;
            InvalidStateException.Check((table[control] & ~1) == 0 && table[control + 1] == 0
                && table[control + 2] == 0 && table[control + 3] == 0, component,
                $"MSI-X vector {v}: reserved Vector Control bits set");
        }
        for (int bit = _msixVectors; bit < 8 * _msixPba.Length; bit++)
        {
            InvalidStateException.Check((pba[bit >> 3] & 1 << (bit & 7)) == 0, component,
                $"MSI-X PBA bit {bit} is set but the function has {_msixVectors} vectors");
        }
    }

    /// <summary>Read-only bits the function itself changes at run time.</summary>
    int DeviceSetBits(int offset)
    {
        if (offset == PciConfig.Status)
        {
            return (byte)PciStatus.InterruptStatus;
        }
        return _msiCapability != 0 && _msiMaskable && offset == MsiPendingOffset ? 1 : 0;
    }

    /// <summary>Applies a state <see cref="CheckFunctionState"/> accepted.</summary>
    protected void ApplyFunctionState(PciFunctionState state)
    {
        lock (_configLock)
        {
            state.Config.CopyTo(_config, 0);
            state.MsixTable.CopyTo(_msixTable, 0);
            state.MsixPba.CopyTo(_msixPba, 0);
            _busMaster = (_config[PciConfig.Command] & (byte)PciCommand.BusMaster) != 0;
        }
        lock (_intxGate)
        {
            _intxRequested = state.IntxAsserted;
            DriveIntxLocked();
        }
        ApplyAtsControl();
        _bus?.UpdateDecode();
    }
}
