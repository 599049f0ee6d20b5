using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// The register sequence drivers/iommu/intel/ (dmar.c, iommu.c, irq_remapping.c) performs at boot,
/// with its access widths (writel for GCMD/IQT, dmar_writeq for 64-bit registers), end to end.
/// </summary>
public class VtdLinuxSequenceTests
{
    const ulong Queue = 0x40_0000, IrTable = 0x50_0000, Status = 0x41_0000;

    [Fact]
    public void BootSequenceThenTranslatedDmaAndRemappedMsi()
    {
        using var f = new VtdFixture();
        uint gcmd = 0;
        void Gcmd(uint bits, uint waitFor, bool set = true)
        {
            gcmd = set ? gcmd | bits : gcmd & ~bits;
            f.W32(0x18, gcmd | (bits & (Srtp | Sirtp)));
            Assert.Equal(set ? waitFor : 0u, f.R32(Gsts) & waitFor);   // IOMMU_WAIT_OP
            gcmd &= ~(Srtp | Sirtp);
        }
        int slot = 0;
        void Qi(ulong lo, ulong hi)
        {
            // qi_submit_sync: the descriptor, then a wait descriptor with status write, then IQT.
            f.Ram.WriteU64(Queue + (ulong)slot * 16, lo);
            f.Ram.WriteU64(Queue + (ulong)slot * 16 + 8, hi);
            f.Ram.WriteU64(Queue + (ulong)(slot + 1) * 16, 5UL | (1UL << 5) | (1UL << 6) | (1UL << 32));
            f.Ram.WriteU64(Queue + (ulong)(slot + 1) * 16 + 8, Status);
            f.Ram.WriteU32(Status, 0);
            slot += 2;
            f.W32(Iqt, (uint)(slot * 16));
            Assert.Equal(1u, f.Ram.ReadU32(Status));    // QI_DONE
        }

        ulong cap = f.R64(0x08), ecap = f.R64(0x10);
        Assert.NotEqual(0UL, (cap >> 8) & 0x1F);         // SAGAW non-zero
        Assert.NotEqual(0UL, ecap & 2);                  // QI
        Assert.NotEqual(0UL, ecap & 8);                  // IR
        Assert.NotEqual(0UL, ecap & 16);                 // EIM

        // dmar_enable_qi
        f.W32(Iqt, 0);
        f.W64(Iqa, Queue);
        Gcmd(Qie, Qie);

        // Interrupt remapping: table, SIRTP, global IEC flush, IRE, CFI stays clear.
        f.W64(Irta, IrTable | (1UL << 11) | 0xF);
        Gcmd(Sirtp, Sirtp);
        Qi(4, 0);
        Gcmd(Ire, Ire);

        // Fault event MSI (dmar_msi_write) and the initial dmar_fault clearing pass.
        f.W32(Fedata, 0x29);
        f.W32(Feaddr, 0xFEE0_0000);
        f.W32(Feuaddr, 0);
        f.W32(Fsts, 0x73);
        f.W32(Fectl, 0);

        // Root table, global context and IOTLB flushes through the queue, then TE.
        ulong slpt = f.SetContext(0x0010, 1, levels: 5);   // Linux picks the largest SAGAW: 5 levels
        f.Map(slpt, 5, 0xFFFF_F000, 0x60_0000);            // the top of a 32-bit DMA mask
        f.W64(Rtaddr, RootTable);
        Gcmd(Srtp, Srtp);
        Qi(1UL | (1UL << 4), 0);                           // context cache, global
        Qi(2UL | (1UL << 4) | (1UL << 6) | (1UL << 7), 0);  // IOTLB, global, DW/DR
        Gcmd(Te, Te);
        Assert.Equal(Te | Qie | Ire | Sirtp | Srtp, f.R32(Gsts));

        // A device DMA write, then an MSI through an IRTE in x2APIC mode.
        var dma = f.Unit.DmaSpaceFor(0x0010);
        Assert.Equal(DmaStatus.Ok, dma.Write(0xFFFF_F800, [0xAB]));
        Assert.Equal(0xAB, f.ReadRam(0x60_0800, 1)[0]);
        f.Ram.WriteU64(IrTable + 3 * 16, 1UL | (0x41UL << 16) | (0x100UL << 32));
        f.Ram.WriteU64(IrTable + 3 * 16 + 8, 0x0010 | (1UL << 18));
        Assert.Equal(DmaStatus.Ok, dma.Write(0xFEE0_0000 | (3 << 5) | (1 << 4) | (1 << 3), BitConverter.GetBytes(0u)));
        var irq = Assert.Single(f.Apic.Delivered);
        Assert.Equal((0x41, 0x100u), (irq.Vector, irq.Destination));

        // A stray DMA: one fault event MSI with the programmed vector, record as Linux decodes it.
        Assert.Equal(DmaStatus.Blocked, dma.Read(0x1000, new byte[8]));
        var ev = Assert.Single(f.Events.Messages);
        Assert.Equal(0x29u, ev.Data);
        uint fsts = f.R32(Fsts);
        Assert.Equal(2u, fsts & 2);
        int index = (int)((fsts >> 8) & 0xFF);
        uint top = f.R32(f.Fro + index * 16 + 12);
        Assert.Equal(0x06u, top & 0xFF);                 // "[DMA Read] ... fault reason 06"
        Assert.Equal(1u, (top >> 30) & 1);
        f.W32(f.Fro + index * 16 + 12, 1u << 31);
        f.W32(Fsts, 0x83);                               // DMA_FSTS_PFO | PPF | PRO
        Assert.Equal(0u, f.R32(Fsts));
    }
}
