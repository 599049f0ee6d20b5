using SharpVisor.Core;
using SharpVisor.Devices.Iommu;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>Records messages sent to it (fault and invalidation events).</summary>
sealed class RecordingMsiSink : IMsiSink
{
    public readonly List<(ulong Address, uint Data, ushort Rid)> Messages = [];
    public void SendMsi(ulong address, uint data, ushort requesterId) => Messages.Add((address, data, requesterId));
}

sealed class RecordingApicBus : IApicBus
{
    public readonly List<ApicInterrupt> Delivered = [];
    public void Deliver(in ApicInterrupt interrupt) => Delivered.Add(interrupt);
}

/// <summary>
/// A guest-less VT-d test bench: 64 MiB of guest RAM, the unit, and helpers that build root,
/// context and second-level tables the way a driver does (spec 9.1, 9.3, 9.8).
/// </summary>
sealed class VtdFixture : IDisposable
{
    public const ulong RootTable = 0x10_0000;
    public const ulong RamSize = 64UL << 20;
    public readonly GuestMemory Ram = new(RamSize);
    public readonly RecordingMsiSink Events = new();
    public readonly RecordingApicBus Apic = new();
    public readonly IntelIommu Unit;
    ulong _nextTable = 0x20_0000;

    public VtdFixture(VtdOptions? options = null, TimerQueue? timers = null)
    {
        Unit = new IntelIommu(options ?? new VtdOptions(), Ram, Events, Apic, timers: timers);
    }

    public void Dispose() => Ram.Dispose();

    // ---- registers ----
    public uint R32(int offset) => (uint)Unit.MmioRead((ulong)offset, 4);
    public ulong R64(int offset) => Unit.MmioRead((ulong)offset, 8);
    public void W32(int offset, uint value) => Unit.MmioWrite((ulong)offset, 4, value);
    public void W64(int offset, ulong value) => Unit.MmioWrite((ulong)offset, 8, value);

    public const int Gcmd = 0x18, Gsts = 0x1C, Rtaddr = 0x20, Ccmd = 0x28, Fsts = 0x34, Fectl = 0x38;
    public const int Fedata = 0x3C, Feaddr = 0x40, Feuaddr = 0x44;
    public const int Iqh = 0x80, Iqt = 0x88, Iqa = 0x90, Ics = 0x9C, Iectl = 0xA0, Iedata = 0xA4, Ieaddr = 0xA8, Irta = 0xB8;
    public const uint Te = 1u << 31, Srtp = 1u << 30, Wbf = 1u << 27, Qie = 1u << 26, Ire = 1u << 25, Sirtp = 1u << 24, Cfi = 1u << 23;

    public int Fro => (int)((Unit.Capability >> 24) & 0x3FF) * 16;
    public int Iro => (int)((Unit.ExtendedCapability >> 8) & 0x3FF) * 16;

    /// <summary>Sets one GCMD bit the way Linux does: the status bits it keeps plus the change.</summary>
    public void Command(uint bit, bool on = true)
    {
        uint persistent = R32(Gsts) & (Te | Qie | Ire | Cfi);
        W32(Gcmd, on ? persistent | bit : persistent & ~bit);
    }

    public void EnableTranslation(ulong rootTable = RootTable)
    {
        W64(Rtaddr, rootTable);
        Command(Srtp);
        Command(Te);
    }

    // ---- tables ----
    public ulong AllocTable()
    {
        ulong t = _nextTable;
        _nextTable += 4096;
        Ram.GetSpan(t, 4096).Clear();
        return t;
    }

    public ulong ContextTable(byte bus)
    {
        ulong rootEntry = RootTable + bus * 16UL;
        ulong lo = Ram.ReadU64(rootEntry);
        if ((lo & 1) == 0)
        {
            lo = AllocTable() | 1;
            Ram.WriteU64(rootEntry, lo);
        }
        return lo & ~0xFFFUL;
    }

    /// <summary>Writes a context entry (9.3). Returns the SL page-table root it points to.</summary>
    public ulong SetContext(ushort sid, ushort domainId, int levels = 4, int tt = 0, bool fpd = false, ulong? slpt = null)
    {
        ulong table = ContextTable((byte)(sid >> 8));
        ulong root = slpt ?? AllocTable();
        ulong lo = root | ((ulong)tt << 2) | (fpd ? 2UL : 0) | 1;
        ulong hi = (ulong)(uint)(levels - 2) | ((ulong)domainId << 8);
        Ram.WriteU64(table + (sid & 0xFFUL) * 16, lo);
        Ram.WriteU64(table + (sid & 0xFFUL) * 16 + 8, hi);
        return root;
    }

    public void WriteContextRaw(ushort sid, ulong lo, ulong hi)
    {
        ulong table = ContextTable((byte)(sid >> 8));
        Ram.WriteU64(table + (sid & 0xFFUL) * 16, lo);
        Ram.WriteU64(table + (sid & 0xFFUL) * 16 + 8, hi);
    }

    /// <summary>Maps <paramref name="iova"/> → <paramref name="hpa"/> with a leaf at <paramref name="leafLevel"/> (1: 4K, 2: 2M, 3: 1G).</summary>
    public ulong Map(ulong slptRoot, int levels, ulong iova, ulong hpa, bool read = true, bool write = true, int leafLevel = 1)
    {
        ulong table = slptRoot;
        for (int level = levels; level > leafLevel; level--)
        {
            ulong slot = table + ((iova >> (12 + 9 * (level - 1))) & 511) * 8;
            ulong e = Ram.ReadU64(slot);
            if ((e & 3) == 0)
            {
                e = AllocTable() | 3;
                Ram.WriteU64(slot, e);
            }
            table = e & 0x000F_FFFF_FFFF_F000UL;
        }
        ulong leafSlot = table + ((iova >> (12 + 9 * (leafLevel - 1))) & 511) * 8;
        ulong pte = hpa | (read ? 1UL : 0) | (write ? 2UL : 0) | (leafLevel > 1 ? 1UL << 7 : 0);
        Ram.WriteU64(leafSlot, pte);
        return leafSlot;
    }

    // ---- fault records ----
    public (ulong Low, ulong High) FaultRecord(int index) => (R64(Fro + 16 * index), R64(Fro + 16 * index + 8));
    public static int Reason(ulong high) => (int)((high >> 32) & 0xFF);
    public static bool F(ulong high) => (high >> 63) != 0;

    public void ClearFault(int index) => W32(Fro + 16 * index + 12, 1u << 31);

    public byte[] Fill(ulong gpa, int length, byte value)
    {
        var b = new byte[length];
        Array.Fill(b, value);
        Ram.TryWrite(gpa, b);
        return b;
    }

    public byte[] ReadRam(ulong gpa, int length)
    {
        var b = new byte[length];
        Ram.TryRead(gpa, b);
        return b;
    }
}
