using SharpVisor.Core;
using SharpVisor.Devices.Iommu;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// Builds scalable-mode structures the way Linux's intel-iommu does (iommu.c
/// domain_context_mapping_one, pasid.c intel_pasid_setup_*): scalable-mode root entries (spec 9.2),
/// 256-bit context entries (9.4), the PASID directory (9.5), 512-bit PASID entries (9.6) and
/// first-level IA-32e tables (9.7). Also a 256-bit invalidation queue (6.5.2, IQA.DW=1).
/// </summary>
sealed class VtdScalableFixture : IDisposable
{
    public readonly VtdFixture F;
    public const ulong Queue = 0x3F0_0000;
    public const ulong StatusAddr = 0x3F8_0000;
    ulong _tail;

    public VtdScalableFixture(VtdOptions? options = null, TimerQueue? timers = null)
    {
        F = new VtdFixture(options, timers);
    }

    public void Dispose() => F.Dispose();
    public IntelIommu Unit => F.Unit;
    public GuestMemory Ram => F.Ram;

    /// <summary>RTADDR with TTM=01b (11.4.5), SRTP, TE: what iommu_set_root_entry does with DMA_RTADDR_SMT.</summary>
    public void EnableScalableTranslation()
    {
        F.W64(VtdFixture.Rtaddr, VtdFixture.RootTable | (1UL << 10));
        F.Command(VtdFixture.Srtp);
        F.Command(VtdFixture.Te);
    }

    /// <summary>The 4 KiB scalable-mode context table of (bus, lower/upper half), allocated on demand (9.2).</summary>
    public ulong ContextTable(ushort sid)
    {
        ulong slot = VtdFixture.RootTable + (ulong)(sid >> 8) * 16 + ((sid & 0x80) != 0 ? 8UL : 0);
        ulong e = Ram.ReadU64(slot);
        if ((e & 1) == 0)
        {
            e = F.AllocTable() | 1;
            Ram.WriteU64(slot, e);
        }
        return e & ~0xFFFUL;
    }

    /// <summary>Writes a scalable-mode context entry (9.4); returns the PASID directory it points to.</summary>
    public ulong SetContext(ushort sid, uint ridPasid = 0, bool dte = false, bool pasidEnable = true, int pdts = 0, bool fpd = false, ulong? directory = null)
    {
        ulong dir = directory ?? F.AllocTable();
        ulong lo = dir | ((ulong)pdts << 9) | (pasidEnable ? 8UL : 0) | (dte ? 4UL : 0) | (fpd ? 2UL : 0) | 1;
        WriteContextRaw(sid, lo, ridPasid);
        return dir;
    }

    public void WriteContextRaw(ushort sid, ulong q0, ulong q1, ulong q2 = 0, ulong q3 = 0)
    {
        ulong at = ContextTable(sid) + (ulong)(sid & 0x7F) * 32;
        Ram.WriteU64(at, q0);
        Ram.WriteU64(at + 8, q1);
        Ram.WriteU64(at + 16, q2);
        Ram.WriteU64(at + 24, q3);
    }

    /// <summary>The 64-byte PASID entry slot of <paramref name="pasid"/>, allocating the PASID table on demand (9.5).</summary>
    public ulong PasidEntrySlot(ulong directory, uint pasid)
    {
        ulong dirSlot = directory + (pasid >> 6) * 8;
        ulong d = Ram.ReadU64(dirSlot);
        if ((d & 1) == 0)
        {
            d = F.AllocTable() | 1;
            Ram.WriteU64(dirSlot, d);
        }
        return (d & ~0xFFFUL) + (pasid & 63) * 64;
    }

    public void WritePasidEntry(ulong directory, uint pasid, params ulong[] q)
    {
        ulong slot = PasidEntrySlot(directory, pasid);
        for (int i = 0; i < 8; i++)
        {
            Ram.WriteU64(slot + (ulong)i * 8, i < q.Length ? q[i] : 0);
        }
    }

    /// <summary>PGTT=001b first-level entry (intel_pasid_setup_first_level): returns the FL root table.</summary>
    public ulong SetFirstLevel(ulong directory, uint pasid, ushort did, int levels = 4, bool sre = false, bool ere = false, bool wpe = false, bool eafe = false)
    {
        ulong root = F.AllocTable();
        ulong q0 = (1UL << 6) | (3UL << 2) | 1;                                   // PGTT=001b, AW (ignored), P
        ulong q1 = did;
        ulong q2 = root | (levels == 5 ? 1UL << 2 : 0) | (sre ? 1UL : 0) | (ere ? 2UL : 0) | (wpe ? 0x10UL : 0) | (eafe ? 0x80UL : 0);
        WritePasidEntry(directory, pasid, q0, q1, q2);
        return root;
    }

    /// <summary>PGTT=010b second-level entry (intel_pasid_setup_second_level): returns the SL root table.</summary>
    public ulong SetSecondLevel(ulong directory, uint pasid, ushort did, int levels = 4)
    {
        ulong root = F.AllocTable();
        WritePasidEntry(directory, pasid, root | (2UL << 6) | ((ulong)(levels - 2) << 2) | 1, did);
        return root;
    }

    public void SetPassThrough(ulong directory, uint pasid, ushort did) =>
        WritePasidEntry(directory, pasid, (4UL << 6) | (2UL << 2) | 1, did);

    public const ulong FlP = 1, FlRw = 2, FlUs = 4, FlA = 1UL << 5, FlD = 1UL << 6, FlPs = 1UL << 7, FlXd = 1UL << 63;

    /// <summary>Maps a first-level page (9.7); intermediate entries are P|RW|US. Returns the leaf slot.</summary>
    public ulong MapFirstLevel(ulong root, int levels, ulong iova, ulong hpa, ulong leafFlags = FlP | FlRw | FlUs, int leafLevel = 1, ulong upperFlags = FlP | FlRw | FlUs)
    {
        ulong table = root;
        for (int level = levels; level > leafLevel; level--)
        {
            ulong slot = table + ((iova >> (12 + 9 * (level - 1))) & 511) * 8;
            ulong e = Ram.ReadU64(slot);
            if ((e & 1) == 0)
            {
                e = F.AllocTable() | upperFlags;
                Ram.WriteU64(slot, e);
            }
            table = e & 0x000F_FFFF_FFFF_F000UL;
        }
        ulong leafSlot = table + ((iova >> (12 + 9 * (leafLevel - 1))) & 511) * 8;
        Ram.WriteU64(leafSlot, hpa | leafFlags | (leafLevel > 1 ? FlPs : 0));
        return leafSlot;
    }

    /// <summary>The slots a first-level walk of <paramref name="iova"/> reads, top level first.</summary>
    public List<ulong> FirstLevelSlots(ulong root, int levels, ulong iova)
    {
        var slots = new List<ulong>();
        ulong table = root;
        for (int level = levels; level >= 1; level--)
        {
            ulong slot = table + ((iova >> (12 + 9 * (level - 1))) & 511) * 8;
            slots.Add(slot);
            ulong e = Ram.ReadU64(slot);
            if (level == 1 || (e & FlPs) != 0) break;
            table = e & 0x000F_FFFF_FFFF_F000UL;
        }
        return slots;
    }

    // ---- 256-bit invalidation queue (dmar_enable_qi with DW=1 when ECAP.SMTS) ----

    public void EnableWideQueue()
    {
        F.W64(VtdFixture.Iqt, 0);
        F.W64(VtdFixture.Iqa, Queue | (1UL << 11));
        F.Command(VtdFixture.Qie);
    }

    public ulong Tail => _tail;

    public void Put(ulong q0, ulong q1 = 0, ulong q2 = 0, ulong q3 = 0)
    {
        Ram.WriteU64(Queue + _tail, q0);
        Ram.WriteU64(Queue + _tail + 8, q1);
        Ram.WriteU64(Queue + _tail + 16, q2);
        Ram.WriteU64(Queue + _tail + 24, q3);
        _tail = (_tail + 32) % 4096;
    }

    public void Submit() => F.W64(VtdFixture.Iqt, _tail);

    /// <summary>Puts the descriptors then a status-writing wait, submits, and returns whether the wait completed.</summary>
    public bool Run(uint waitData, params (ulong Q0, ulong Q1)[] descriptors)
    {
        Ram.WriteU32(StatusAddr, 0);
        foreach (var (q0, q1) in descriptors)
        {
            Put(q0, q1);
        }
        Put(Wait(waitData), StatusAddr);
        Submit();
        return Ram.ReadU32(StatusAddr) == waitData;
    }

    // Descriptor encodings as Linux builds them (include/linux/intel-iommu.h QI_* macros; spec 6.5.2.x).
    public static ulong Wait(uint data, bool irq = false) => 5UL | (irq ? 1UL << 4 : 0) | (1UL << 5) | ((ulong)data << 32);
    public static ulong PasidCacheDesc(int g, ushort did, uint pasid = 0) => 7UL | ((ulong)g << 4) | ((ulong)did << 16) | ((ulong)pasid << 32);
    public static ulong PasidIotlbDesc(int g, ushort did, uint pasid) => 6UL | ((ulong)g << 4) | ((ulong)did << 16) | ((ulong)pasid << 32);
    public static ulong ContextDesc(int g, ushort did = 0, ushort sid = 0) => 1UL | ((ulong)g << 4) | ((ulong)did << 16) | ((ulong)sid << 32);
    public static ulong IotlbDesc(int g, ushort did) => 2UL | ((ulong)g << 4) | ((ulong)did << 16);
    public static ulong DeviceTlbDesc(ushort sid) => 3UL | ((ulong)sid << 32);
    public static ulong PasidDeviceTlbDesc(ushort sid, uint pasid) => 8UL | ((ulong)sid << 16) | ((ulong)pasid << 32);
}
