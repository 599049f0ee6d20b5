using SharpVisor.Core;

namespace SharpVisor.Devices.Pci;

public abstract partial class PciFunction
{
    // MSI (PCI 3.0, 6.8.1). One vector: Multiple Message Capable is 000b.
    int _msiCapability;
    bool _msi64;
    bool _msiMaskable;
    int MsiDataOffset => _msiCapability + (_msi64 ? 0x0C : 0x08);
    int MsiMaskOffset => MsiDataOffset + 4;
    int MsiPendingOffset => MsiDataOffset + 8;
    int MsiLength => (_msi64 ? 14 : 10) + (_msiMaskable ? 10 : 0);

    // MSI-X (PCI 3.0, 6.8.2). Table: 16 bytes per vector; PBA: one bit per vector in qwords.
    int _msixCapability;
    int _msixVectors;
    int _msixTableBar;
    ulong _msixTableOffset;
    int _msixPbaBar;
    ulong _msixPbaOffset;
    byte[] _msixTable = [];
    byte[] _msixPba = [];

    // INTx: what the device asks for, and what this function last drove on its line.
    readonly Lock _intxGate = new();
    IIrqLine? _intxLine;
    bool _intxRequested;
    bool _intxDriven;

    /// <summary>Offset of the MSI capability, 0 when there is none.</summary>
    public int MsiCapabilityOffset => _msiCapability;
    /// <summary>Offset of the MSI-X capability, 0 when there is none.</summary>
    public int MsiXCapabilityOffset => _msixCapability;

    public bool MsiEnabled
    {
        get { lock (_configLock) { return MsiEnabledLocked; } }
    }

    public bool MsiXEnabled
    {
        get { lock (_configLock) { return MsiXEnabledLocked; } }
    }

    bool MsiEnabledLocked => _msiCapability != 0 && (_config[_msiCapability + 2] & 1) != 0;
    bool MsiXEnabledLocked => _msixCapability != 0 && (_config[_msixCapability + 3] & 0x80) != 0;
    bool MsiXFunctionMaskedLocked => (_config[_msixCapability + 3] & 0x40) != 0;

    /// <summary>
    /// Adds an MSI capability with one vector (PCI 3.0, 6.8.1.3: Message Control, Address, Upper
    /// Address when 64-bit, Data, and Mask/Pending bits when per-vector masking is offered).
    /// </summary>
    protected int AddMsiCapability(bool is64Bit, bool perVectorMask)
    {
        int length = (is64Bit ? 14 : 10) + (perVectorMask ? 10 : 0);
        int offset = AddCapability(PciCapabilityId.Msi, length);
        _msiCapability = offset;
        _msi64 = is64Bit;
        _msiMaskable = perVectorMask;
        // Message Control: bit 0 MSI Enable (RW); Multiple Message Capable/Enable 000b (one
        // vector, read-only); bit 7 64-bit capable; bit 8 per-vector masking capable.
        InitConfig(offset + 2, 2, (is64Bit ? 1u << 7 : 0) | (perVectorMask ? 1u << 8 : 0), 0x0001);
        // Message Address: dword aligned, bits 1:0 read 0.
        InitConfig(offset + 4, 4, 0, 0xFFFF_FFFC);
        if (is64Bit)
        {
            InitConfig(offset + 8, 4, 0, 0xFFFF_FFFF);
        }
        // Message Data is 16 bits; the upper half of that dword is reserved.
        InitConfig(MsiDataOffset, 2, 0, 0xFFFF);
        if (perVectorMask)
        {
            InitConfig(MsiMaskOffset, 4, 0, 0x1);
            InitConfig(MsiPendingOffset, 4, 0); // read-only: set by the device
        }
        return offset;
    }

    /// <summary>
    /// Adds an MSI-X capability (PCI 3.0, 6.8.2) with its table and Pending Bit Array inside memory
    /// BARs of this function (defined first). Vectors start masked, as the spec requires at reset.
    /// </summary>
    protected int AddMsiXCapability(int vectors, int tableBar, uint tableOffset, int pbaBar, uint pbaOffset)
    {
        if (vectors is < 1 or > 2048)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(vectors), "MSI-X has 1 to 2048 vectors");
        }
        ulong tableSize = (ulong)vectors * 16;
        ulong pbaSize = (ulong)((vectors + 63) / 64) * 8;
        CheckMsiXStructure(tableBar, tableOffset, tableSize);
        CheckMsiXStructure(pbaBar, pbaOffset, pbaSize);
        if (tableBar == pbaBar && tableOffset < pbaOffset + pbaSize && pbaOffset < tableOffset + tableSize)
        {
            ThrowHelper.InvalidOperation($"{Name}: MSI-X table and PBA overlap");
        }
        int offset = AddCapability(PciCapabilityId.MsiX, 12);
        _msixCapability = offset;
        _msixVectors = vectors;
        _msixTableBar = tableBar;
        _msixTableOffset = tableOffset;
        _msixPbaBar = pbaBar;
        _msixPbaOffset = pbaOffset;
        _msixTable = new byte[tableSize];
        _msixPba = new byte[pbaSize];
        for (int v = 0; v < vectors; v++)
        {
            _msixTable[v * 16 + 12] = 1; // Vector Control bit 0: masked
        }
        // Message Control: Table Size (N-1) read-only; bit 14 Function Mask, bit 15 Enable.
        InitConfig(offset + 2, 2, (uint)(vectors - 1), 0xC000);
        InitConfig(offset + 4, 4, tableOffset | (uint)tableBar);
        InitConfig(offset + 8, 4, pbaOffset | (uint)pbaBar);
        return offset;
    }

    void CheckMsiXStructure(int bar, uint offset, ulong size)
    {
        if ((uint)bar >= PciConfig.BarCount || _bars[bar].Kind is not (PciBarKind.Memory32 or PciBarKind.Memory64)
            || (offset & 7) != 0 || offset + size > _bars[bar].Size)
        {
            ThrowHelper.InvalidOperation($"{Name}: an MSI-X structure must sit qword-aligned inside a memory BAR (BAR{bar}+0x{offset:x})");
        }
    }

    // ---- raising interrupts ----

    /// <summary>
    /// Signals interrupt <paramref name="vector"/> the way the guest set the function up: an MSI-X
    /// message when MSI-X is enabled, else an MSI when MSI is enabled, else asserts INTx (level;
    /// the device deasserts with <see cref="LowerInterrupt"/>). A masked vector becomes pending and
    /// is sent when unmasked. Call it without holding the device's own lock.
    /// </summary>
    protected void RaiseInterrupt(int vector = 0)
    {
        ulong address = 0;
        uint data = 0;
        bool send = false;
        bool intx = false;
        lock (_configLock)
        {
            if (MsiXEnabledLocked)
            {
                if ((uint)vector >= (uint)_msixVectors)
                {
                    InterruptsDropped.Increment();
                    return;
                }
                if (MsiXFunctionMaskedLocked || MsiXVectorMaskedLocked(vector))
                {
                    _msixPba[vector >> 3] |= (byte)(1 << (vector & 7));
                    InterruptsMasked.Increment();
                    return;
                }
                (address, data) = MsiXMessageLocked(vector);
                send = true;
            }
            else if (MsiEnabledLocked)
            {
                if (vector != 0)
                {
                    InterruptsDropped.Increment();
                    return;
                }
                if (_msiMaskable && (_config[MsiMaskOffset] & 1) != 0)
                {
                    _config[MsiPendingOffset] |= 1;
                    InterruptsMasked.Increment();
                    return;
                }
                (address, data) = MsiMessageLocked();
                send = true;
            }
            else
            {
                intx = true;
            }
        }
        if (send)
        {
            SendMsi(address, data);
        }
        else if (intx)
        {
            SetIntxLevel(true);
        }
    }

    /// <summary>Deasserts INTx (no effect on message interrupts, which are edges).</summary>
    protected void LowerInterrupt() => SetIntxLevel(false);

    void SendMsi(ulong address, uint data)
    {
        if (_msiSink is { } sink)
        {
            sink.SendMsi(address, data, RequesterId);
        }
        else
        {
            InterruptsDropped.Increment();
        }
    }

    (ulong Address, uint Data) MsiMessageLocked()
    {
        ulong address = ReadRaw(_msiCapability + 4, 4);
        if (_msi64)
        {
            address |= (ulong)ReadRaw(_msiCapability + 8, 4) << 32;
        }
        return (address, ReadRaw(MsiDataOffset, 2));
    }

    bool MsiXVectorMaskedLocked(int vector) => (_msixTable[vector * 16 + 12] & 1) != 0;

    (ulong Address, uint Data) MsiXMessageLocked(int vector)
    {
        int e = vector * 16;
        ulong address = BitConverter.ToUInt64(_msixTable, e);
        return (address, BitConverter.ToUInt32(_msixTable, e + 8));
    }

    /// <summary>After an MSI config write: sends the pending message if the vector is now unmasked.</summary>
    void DeliverPendingMsi()
    {
        ulong address;
        uint data;
        lock (_configLock)
        {
            if (!_msiMaskable || !MsiEnabledLocked || (_config[MsiPendingOffset] & 1) == 0 || (_config[MsiMaskOffset] & 1) != 0)
            {
                return;
            }
            _config[MsiPendingOffset] &= 0xFE;
            (address, data) = MsiMessageLocked();
        }
        SendMsi(address, data);
    }

    /// <summary>After MSI-X enable/function-mask changes: sends every pending, now unmasked vector.</summary>
    void DeliverPendingMsiX()
    {
        for (int v = 0; v < _msixVectors; v++)
        {
            DeliverPendingMsiXVector(v);
        }
    }

    void DeliverPendingMsiXVector(int vector)
    {
        ulong address;
        uint data;
        lock (_configLock)
        {
            int bit = 1 << (vector & 7);
            if (!MsiXEnabledLocked || MsiXFunctionMaskedLocked || MsiXVectorMaskedLocked(vector) || (_msixPba[vector >> 3] & bit) == 0)
            {
                return;
            }
            _msixPba[vector >> 3] &= (byte)~bit;
            (address, data) = MsiXMessageLocked(vector);
        }
        SendMsi(address, data);
    }

    /// <summary>True when the MSI-X pending bit of <paramref name="vector"/> is set.</summary>
    public bool IsMsiXPending(int vector)
    {
        lock (_configLock)
        {
            return (uint)vector < (uint)_msixVectors && (_msixPba[vector >> 3] & (1 << (vector & 7))) != 0;
        }
    }

    // ---- MSI-X table and PBA accesses through the BAR ----

    bool TryMsiXRead(int bar, ulong offset, int size, out ulong value)
    {
        bool inTable = bar == _msixTableBar && offset >= _msixTableOffset && offset < _msixTableOffset + (ulong)_msixTable.Length;
        bool inPba = bar == _msixPbaBar && offset >= _msixPbaOffset && offset < _msixPbaOffset + (ulong)_msixPba.Length;
        if (!inTable && !inPba)
        {
            value = 0;
            return false;
        }
        byte[] array = inTable ? _msixTable : _msixPba;
        int start = (int)(offset - (inTable ? _msixTableOffset : _msixPbaOffset));
        // PCI 3.0, 6.8.2: software accesses the table and PBA with aligned dwords or qwords.
        if (size is not (4 or 8) || (start & (size - 1)) != 0 || start + size > array.Length)
        {
            BadAccesses.Increment();
            value = size == 8 ? ulong.MaxValue : (1UL << (size * 8)) - 1;
            return true;
        }
        lock (_configLock)
        {
            value = size == 8 ? BitConverter.ToUInt64(array, start) : BitConverter.ToUInt32(array, start);
        }
        return true;
    }

    bool TryMsiXWrite(int bar, ulong offset, int size, ulong value)
    {
        bool inTable = bar == _msixTableBar && offset >= _msixTableOffset && offset < _msixTableOffset + (ulong)_msixTable.Length;
        bool inPba = bar == _msixPbaBar && offset >= _msixPbaOffset && offset < _msixPbaOffset + (ulong)_msixPba.Length;
        if (!inTable && !inPba)
        {
            return false;
        }
        if (inPba)
        {
            return true; // the PBA is read-only
        }
        int start = (int)(offset - _msixTableOffset);
        if (size is not (4 or 8) || (start & (size - 1)) != 0 || start + size > _msixTable.Length)
        {
            BadAccesses.Increment();
            return true;
        }
        int vector = start / 16;
        lock (_configLock)
        {
            for (int i = 0; i < size; i++)
            {
                int o = start + i;
                byte b = (byte)(value >> (8 * i));
                // Vector Control (entry bytes 12..15): only bit 0, Mask Bit, is defined.
                _msixTable[o] = (o & 15) switch
                {
                    12 => (byte)(b & 1),
                    13 or 14 or 15 => 0,
                    _ => b,
                };
            }
        }
        if ((start & 15) + size > 12)
        {
            DeliverPendingMsiXVector(vector);
        }
        return true;
    }

    // ---- INTx ----

    /// <summary>Sets the function's INTx condition (level-triggered, PCI 3.0, 2.2.6).</summary>
    protected void SetIntxLevel(bool asserted)
    {
        lock (_intxGate)
        {
            _intxRequested = asserted;
            DriveIntxLocked();
        }
    }

    void UpdateIntxLine()
    {
        lock (_intxGate)
        {
            DriveIntxLocked();
        }
    }

    /// <summary>
    /// Drives the line from the INTx condition, Interrupt Disable and MSI/MSI-X enable (a function
    /// with MSI or MSI-X enabled may not use INTx, PCI 3.0, 6.8). The line is driven under the INTx
    /// lock only, so edges cannot be reordered; interrupt controllers never call back into a function.
    /// </summary>
    void DriveIntxLocked()
    {
        bool level;
        lock (_configLock)
        {
            if (_intxRequested)
            {
                _config[PciConfig.Status] |= (byte)PciStatus.InterruptStatus;
            }
            else
            {
                _config[PciConfig.Status] &= unchecked((byte)~PciStatus.InterruptStatus);
            }
            bool disabled = (ReadRaw(PciConfig.Command, 2) & (uint)PciCommand.InterruptDisable) != 0;
            level = _intxRequested && !disabled && !MsiEnabledLocked && !MsiXEnabledLocked && _config[PciConfig.InterruptPin] != 0;
        }
        if (level != _intxDriven)
        {
            _intxDriven = level;
            _intxLine?.SetLevel(level);
        }
    }
}
