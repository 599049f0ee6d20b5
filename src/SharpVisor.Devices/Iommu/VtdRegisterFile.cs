namespace SharpVisor.Devices.Iommu;

/// <summary>What a write to a register does beyond storing its writable bits: one handler each in IntelIommu.</summary>
internal enum VtdRegisterEffect : byte
{
    None,
    /// <summary>GCMD (11.4.4.1): commands whose status appears in GSTS.</summary>
    GlobalCommand,
    /// <summary>CCMD.ICC (11.4.6): register-based context-cache invalidation.</summary>
    ContextCommand,
    /// <summary>FSTS (11.4.9.2): clearing a status may service the fault event and restart the queue.</summary>
    FaultStatus,
    /// <summary>FECTL.IM (11.4.9.3): unmasking sends a pending fault event.</summary>
    FaultEventControl,
    /// <summary>PMEN.EPM (11.4.12.1): PRS follows at once.</summary>
    ProtectedMemoryEnable,
    /// <summary>IQT (11.4.10.2): new descriptors to fetch.</summary>
    QueueTail,
    /// <summary>ICS.IWC (11.4.10.4): clearing it services the invalidation event.</summary>
    CompletionStatus,
    /// <summary>IECTL.IM (11.4.10.5): unmasking sends a pending invalidation event.</summary>
    InvalidationEventControl,
    /// <summary>IOTLB.IVT (11.4.8.1): register-based IOTLB invalidation.</summary>
    IotlbCommand,
    /// <summary>FRCD.F (11.4.9.7): software releases a fault record.</summary>
    FaultRecord,
}

/// <summary>
/// One register of a remapping unit as chapter 11 lays it out (11.4, table "Address Mapping for
/// Remapping Hardware Registers", and each register's own field table).
/// </summary>
/// <param name="Width">32 or 64 bits (the 128-bit fault recording registers are two 64-bit halves).</param>
/// <param name="Reset">The value after reset; RO fields keep it for ever (VER, CAP, ECAP).</param>
/// <param name="WriteMask">RW bits: a write stores these bits of the value written.</param>
/// <param name="Rw1cMask">RW1C bits: writing 1 clears them, writing 0 leaves them.</param>
/// <param name="StatusMask">RO bits the hardware itself changes (GSTS, IQH, FSTS.FRI, FECTL.IP, CAIG...).</param>
/// <param name="Effect">The action a write starts, after the bits are stored.</param>
/// <param name="EffectDword">Which dword of a 64-bit register starts it (the one holding the command bit).</param>
internal sealed record VtdRegisterSpec(string Name, int Offset, int Width, ulong Reset, ulong WriteMask, ulong Rw1cMask = 0,
    ulong StatusMask = 0, VtdRegisterEffect Effect = VtdRegisterEffect.None, int EffectDword = 0)
{
    /// <summary>The layout of one unit: the fixed block, then the IOTLB and fault recording registers where IRO/FRO put them.</summary>
    public static VtdRegisterSpec[] Layout(VtdOptions o, ulong cap, ulong ecap)
    {
        ulong haw = (1UL << o.HostAddressWidth) - 1;
        ulong tableAddress = haw & ~0xFFFUL;                    // bits HAW-1:12 of table pointers
        ulong protectedHigh = haw & ~0x1F_FFFFUL;               // 11.4.12.4/5: 2 MiB granular, HAW-1:21
        uint upperAddress = o.ExtendedInterruptMode ? 0xFFFF_FFFFu : 0;  // FEUADDR/IEUADDR: only with ECAP.EIM
        var list = new List<VtdRegisterSpec>
        {
            new("VER", VtdReg.Ver, 32, o.Version, 0),                                      // 11.4.1
            new("CAP", VtdReg.Cap, 64, cap, 0),                                            // 11.4.2
            new("ECAP", VtdReg.Ecap, 64, ecap, 0),                                         // 11.4.3
            // 11.4.4.1 GCMD is write only (reads 0): nothing is stored, the handler acts on the value.
            new("GCMD", VtdReg.Gcmd, 32, 0, 0, Effect: VtdRegisterEffect.GlobalCommand),
            new("GSTS", VtdReg.Gsts, 32, 0, 0, StatusMask: ImplementedCommands(o)),         // 11.4.4.2
            // 11.4.5: RTA 63:12 (bits above HAW not implemented), TTM 11:10 only with ECAP.SMTS.
            new("RTADDR", VtdReg.Rtaddr, 64, 0, tableAddress | (o.ScalableMode ? 0xC00UL : 0)),
            // 11.4.6: ICC 63, CIRG 62:61, FM 33:32, SID 31:16, DID 15:0 are RW; CAIG 60:59 RO.
            new("CCMD", VtdReg.Ccmd, 64, 0, 0xE000_0003_FFFF_FFFFUL, StatusMask: 3UL << 59,
                Effect: VtdRegisterEffect.ContextCommand, EffectDword: 1),
            // 11.4.9.2: PFO, IQE, ICE, ITE RW1C; PPF (OR of the F bits) and FRI 15:8 RO.
            new("FSTS", VtdReg.Fsts, 32, 0, 0, VtdFsts.Rw1cMask, VtdFsts.Ppf | (0xFFu << VtdFsts.FriShift),
                VtdRegisterEffect.FaultStatus),
            // 11.4.9.3: IM RW and set at reset, IP RO.
            new("FECTL", VtdReg.Fectl, 32, VtdEventCtl.Im, VtdEventCtl.Im, StatusMask: VtdEventCtl.Ip,
                Effect: VtdRegisterEffect.FaultEventControl),
            new("FEDATA", VtdReg.Fedata, 32, 0, 0xFFFF),                                   // 11.4.9.4: IMD; EIMD not implemented
            new("FEADDR", VtdReg.Feaddr, 32, 0, 0xFFFF_FFFC),                              // 11.4.9.5: MA 31:2
            new("FEUADDR", VtdReg.Feuaddr, 32, 0, upperAddress),                           // 11.4.9.6
        };
        if (o.ProtectedMemoryRegions)
        {
            // 11.4.12: EPM RW, PRS RO (follows EPM); the limits are 2 MiB granular.
            list.Add(new("PMEN", VtdReg.Pmen, 32, 0, 1UL << 31, StatusMask: 1, Effect: VtdRegisterEffect.ProtectedMemoryEnable));
            list.Add(new("PLMBASE", VtdReg.Plmbase, 32, 0, 0xFFE0_0000));
            list.Add(new("PLMLIMIT", VtdReg.Plmlimit, 32, 0, 0xFFE0_0000));
            list.Add(new("PHMBASE", VtdReg.Phmbase, 64, 0, protectedHigh));
            list.Add(new("PHMLIMIT", VtdReg.Phmlimit, 64, 0, protectedHigh));
        }
        if (o.QueuedInvalidation)
        {
            list.Add(new("IQH", VtdReg.Iqh, 64, 0, 0, StatusMask: 0x7_FFF0));              // 11.4.10.1: QH 18:4 RO
            list.Add(new("IQT", VtdReg.Iqt, 64, 0, 0x7_FFF0, Effect: VtdRegisterEffect.QueueTail));   // 11.4.10.2: QT 18:4
            // 11.4.10.3: IQA 63:12, DW 11 (only with ECAP.SMTS), QS 2:0.
            list.Add(new("IQA", VtdReg.Iqa, 64, 0, tableAddress | (o.ScalableMode ? 0x800UL : 0) | 7));
            list.Add(new("ICS", VtdReg.Ics, 32, 0, 0, Rw1cMask: 1, Effect: VtdRegisterEffect.CompletionStatus));  // 11.4.10.4: IWC
            list.Add(new("IECTL", VtdReg.Iectl, 32, VtdEventCtl.Im, VtdEventCtl.Im, StatusMask: VtdEventCtl.Ip,
                Effect: VtdRegisterEffect.InvalidationEventControl));                      // 11.4.10.5
            list.Add(new("IEDATA", VtdReg.Iedata, 32, 0, 0xFFFF));                         // 11.4.10.6
            list.Add(new("IEADDR", VtdReg.Ieaddr, 32, 0, 0xFFFF_FFFC));                    // 11.4.10.7
            list.Add(new("IEUADDR", VtdReg.Ieuaddr, 32, 0, upperAddress));                 // 11.4.10.8
            // 11.4.10.9: IQEI=0 means "no error information", which the spec allows: it stays 0.
            list.Add(new("IQERCD", VtdReg.Iqercd, 64, 0, 0));
        }
        if (o.InterruptRemapping)
        {
            // 11.4.11.1: IRTA 63:12, EIME 11 (only with ECAP.EIM), S 3:0; bits 10:4 reserved.
            list.Add(new("IRTA", VtdReg.Irta, 64, 0, tableAddress | (o.ExtendedInterruptMode ? 0x800UL : 0) | 0xF));
        }
        // 11.4.8.2 IVA: ADDR 63:12, IH 6, AM 5:0. 11.4.8.1 IOTLB: IVT 63, IIRG 61:60, DR 49, DW 48,
        // DID 47:32 RW; IAIG 58:57 RO; bits 31:0 reserved.
        list.Add(new("IVA", o.IotlbRegisterOffset, 64, 0, 0xFFFF_FFFF_FFFF_F07FUL));
        list.Add(new("IOTLB", o.IotlbRegisterOffset + 8, 64, 0, 0xB003_FFFFUL << 32, StatusMask: 3UL << 57,
            Effect: VtdRegisterEffect.IotlbCommand, EffectDword: 1));
        for (int i = 0; i < o.FaultRecordingRegisters; i++)
        {
            // 11.4.9.7: everything RO but F (bit 127), which is RW1C. Low half: FI 63:12. High half:
            // SID 15:0, PP 31, FR 39:32, PV 59:40, T1 62 (written by the unit when it records).
            int at = o.FaultRecordingOffset + 16 * i;
            list.Add(new($"FRCD{i}.LO", at, 64, 0, 0, StatusMask: ~0xFFFUL));
            list.Add(new($"FRCD{i}.HI", at + 8, 64, 0, 0, Rw1cMask: 1UL << 63,
                StatusMask: 0xFFFFUL | (1UL << 31) | (0xFFUL << 32) | (0xF_FFFFUL << 40) | (1UL << 62),
                Effect: VtdRegisterEffect.FaultRecord, EffectDword: 1));
        }
        return [.. list];
    }

    /// <summary>The GSTS status bits of the commands this unit implements (11.4.4.2).</summary>
    static ulong ImplementedCommands(VtdOptions o)
    {
        uint bits = VtdGcmd.Te | VtdGcmd.Srtp;
        if (o.QueuedInvalidation) bits |= VtdGcmd.Qie;
        if (o.InterruptRemapping) bits |= VtdGcmd.Ire | VtdGcmd.Sirtp | VtdGcmd.Cfi;
        return bits;
    }
}

/// <summary>
/// The register file of one unit as data: the contents of every dword of the MMIO region, and per
/// dword what the layout says of it (which register it belongs to, its RW, RW1C and hardware-status
/// bits, the effect a write starts). Dwords no register covers are reserved: they read 0 and ignore
/// writes (11.2). Not thread safe: the unit's lock guards it.
/// </summary>
internal sealed class VtdRegisterFile
{
    readonly uint[] _values;
    readonly uint[] _writeMask;
    readonly uint[] _rw1cMask;
    readonly uint[] _statusMask;
    readonly uint[] _reset;
    readonly VtdRegisterEffect[] _effect;
    /// <summary>Index into <see cref="Layout"/> of the register covering each dword, -1 when reserved.</summary>
    readonly short[] _register;

    public VtdRegisterFile(VtdRegisterSpec[] layout, int regionBytes)
    {
        Layout = layout;
        int dwords = regionBytes / 4;
        _values = new uint[dwords];
        _writeMask = new uint[dwords];
        _rw1cMask = new uint[dwords];
        _statusMask = new uint[dwords];
        _reset = new uint[dwords];
        _effect = new VtdRegisterEffect[dwords];
        _register = new short[dwords];
        Array.Fill(_register, (short)-1);
        for (int r = 0; r < layout.Length; r++)
        {
            var spec = layout[r];
            for (int half = 0; half < spec.Width / 32; half++)
            {
                int i = spec.Offset / 4 + half;
                int shift = 32 * half;
                _register[i] = (short)r;
                _reset[i] = (uint)(spec.Reset >> shift);
                _writeMask[i] = (uint)(spec.WriteMask >> shift);
                _rw1cMask[i] = (uint)(spec.Rw1cMask >> shift);
                _statusMask[i] = (uint)(spec.StatusMask >> shift);
                _effect[i] = half == spec.EffectDword ? spec.Effect : VtdRegisterEffect.None;
            }
        }
        Reset();
    }

    public VtdRegisterSpec[] Layout { get; }

    public int DwordCount => _values.Length;

    public void Reset() => _reset.CopyTo(_values, 0);

    /// <summary>True when some register covers the dword at <paramref name="offset"/>.</summary>
    public bool IsImplemented(int offset) => _register[offset >> 2] >= 0;

    public uint Read32(int offset) => _values[offset >> 2];

    public ulong Read64(int offset) => _values[offset >> 2] | ((ulong)_values[(offset >> 2) + 1] << 32);

    /// <summary>Hardware-side update (status fields, latched heads, fault records): no masks apply.</summary>
    public void Set32(int offset, uint value) => _values[offset >> 2] = value;

    public void Set64(int offset, ulong value)
    {
        _values[offset >> 2] = (uint)value;
        _values[(offset >> 2) + 1] = (uint)(value >> 32);
    }

    public bool Test32(int offset, uint bits) => (_values[offset >> 2] & bits) != 0;

    public void SetBits32(int offset, uint bits, bool on) =>
        _values[offset >> 2] = on ? _values[offset >> 2] | bits : _values[offset >> 2] & ~bits;

    /// <summary>
    /// A software write of one dword: the RW bits take the value written, RW1C bits written as 1
    /// clear, everything else is kept. Returns the effect to run (the caller runs it, with the old
    /// contents in <paramref name="previous"/>).
    /// </summary>
    public VtdRegisterEffect Write(int offset, uint value, out uint previous)
    {
        int i = offset >> 2;
        previous = _values[i];
        uint kept = previous & ~_writeMask[i] & ~(value & _rw1cMask[i]);
        _values[i] = kept | (value & _writeMask[i]);
        return _effect[i];
    }

    /// <summary>A copy of the contents (one element per dword of the region).</summary>
    public uint[] Save() => (uint[])_values.Clone();

    /// <summary>
    /// Null when <paramref name="values"/> could be this unit's register file: every bit that is
    /// neither RW, RW1C nor hardware status holds its reset value (reserved bits zero, VER/CAP/ECAP
    /// those of this configuration). Otherwise names the first offending register.
    /// </summary>
    public string? CheckFixedBits(uint[] values)
    {
        if (values.Length != _values.Length)
        {
            return $"Registers has {values.Length} dwords, this unit's register block has {_values.Length}";
        }
        for (int i = 0; i < values.Length; i++)
        {
            uint fixedBits = ~(_writeMask[i] | _rw1cMask[i] | _statusMask[i]);
            if ((values[i] & fixedBits) != (_reset[i] & fixedBits))
            {
                string where = _register[i] < 0 ? "a reserved offset" : Layout[_register[i]].Name;
                return $"register dword at 0x{i * 4:x} ({where}) is 0x{values[i]:x8}: bits 0x{(values[i] ^ _reset[i]) & fixedBits:x8} are read-only or reserved";
            }
        }
        return null;
    }

    public void Load(uint[] values) => values.CopyTo(_values, 0);
}
