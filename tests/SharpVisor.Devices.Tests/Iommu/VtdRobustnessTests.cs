using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// A hostile guest builds arbitrary tables: no exception escapes, and a DMA that is not Ok never
/// changes a byte of guest memory (reliability.md: blocked DMA leaves memory unchanged).
/// </summary>
public class VtdRobustnessTests
{
    const int Window = 4 << 20;     // every pointer the garbage tables hold lands in the first 4 MiB

    static ulong GarbageEntry(Random rng)
    {
        ulong e = ((ulong)(uint)rng.Next(0, Window) & ~0xFFFUL) | (uint)rng.Next(0, 4096);
        if (rng.Next(8) == 0) e |= (ulong)rng.NextInt64() << 20;   // sometimes reserved/high bits too
        return e;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void GarbageTablesNeverThrowAndBlockedDmaChangesNothing(int seed)
    {
        var rng = new Random(seed);
        using var f = new VtdFixture(new VtdOptions { FaultRecordingRegisters = 4, IotlbSets = 4, IotlbWays = 2 });
        // Fill the window with plausible-looking entries; keep the low bits biased to present.
        var span = f.Ram.GetSpan(0, Window);
        for (int i = 0; i < Window; i += 8)
        {
            ulong e = GarbageEntry(rng);
            if (rng.Next(3) != 0) e |= 1;
            BitConverter.TryWriteBytes(span.Slice(i, 8), e);
        }
        f.EnableTranslation(0x10_0000);
        f.W32(Fectl, 0);
        var before = new byte[Window];
        int ok = 0, blocked = 0;
        for (int i = 0; i < 150; i++)
        {
            var dma = f.Unit.DmaSpaceFor((ushort)rng.Next(0, 65536));
            ulong address = (ulong)rng.NextInt64(0, 1L << 40) & ~(ulong)rng.Next(0, 1 << 20);
            var data = new byte[rng.Next(1, 9000)];
            rng.NextBytes(data);
            span.CopyTo(before);
            var status = dma.Write(address, data);
            if (status == DmaStatus.Ok)
            {
                ok++;
            }
            else
            {
                blocked++;
                Assert.True(span.SequenceEqual(before), $"a {status} DMA of {data.Length} bytes at 0x{address:x} changed memory");
            }
            dma.Read(address, data);
            if (i % 10 == 0)
            {
                // Software sometimes clears the fault log and invalidates, as a driver would.
                for (int r = 0; r < 4; r++) f.ClearFault(r);
                f.W32(Fsts, 0x7F);
                f.W64(Ccmd, (1UL << 63) | (1UL << 61));
                f.W64(f.Iro + 8, (1UL << 63) | (1UL << 60));
            }
        }
        Assert.True(blocked > 0);
        Assert.Equal(150, ok + blocked);
        Assert.True(f.Unit.Counters.FaultsRecorded.Value > 0);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void RandomLeafPermissionsGiveAllOrNothingDma(int seed)
    {
        var rng = new Random(seed);
        using var f = new VtdFixture();
        const ushort dev = 0x0010;
        ulong slpt = f.SetContext(dev, 1, 4);
        var leaves = new ulong[32];
        for (int p = 0; p < 32; p++)
        {
            leaves[p] = f.Map(slpt, 4, (ulong)p << 12, 0x100_0000 + ((ulong)rng.Next(0, 64) << 12));
        }
        foreach (ulong leaf in leaves)
        {
            ulong pte = f.Ram.ReadU64(leaf) & ~3UL;
            pte |= (uint)rng.Next(0, 4);                       // random R/W, sometimes not present
            if (rng.Next(10) == 0) pte |= 1UL << 45;           // output beyond HAW
            f.Ram.WriteU64(leaf, pte);
        }
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(dev);
        var window = f.Ram.GetSpan(0x100_0000, 64 << 12);
        var before = new byte[window.Length];
        int ok = 0, blocked = 0;
        for (int i = 0; i < 200; i++)
        {
            ulong address = (ulong)rng.Next(0, 32 << 12);
            var data = new byte[rng.Next(1, 3 * 4096)];
            rng.NextBytes(data);
            window.CopyTo(before);
            var status = dma.Write(address, data);
            if (status == DmaStatus.Ok)
            {
                ok++;
            }
            else
            {
                blocked++;
                Assert.Equal(DmaStatus.Blocked, status);
                Assert.True(window.SequenceEqual(before));
            }
        }
        Assert.True(ok > 0 && blocked > 0, $"ok={ok} blocked={blocked}");
    }

    /// <summary>vCPU threads and device threads race DMA, invalidation and fault clearing.</summary>
    [Fact]
    public async Task ConcurrentDmaAndInvalidationAreSafe()
    {
        using var f = new VtdFixture(new VtdOptions { IotlbSets = 4, IotlbWays = 2, FaultRecordingRegisters = 2 });
        ulong slpt = f.SetContext(0x0010, 1, 4);
        for (ulong p = 0; p < 16; p++) f.Map(slpt, 4, p << 12, 0x100_0000 + (p << 12));
        f.EnableTranslation();
        var dma = f.Unit.DmaSpaceFor(0x0010);
        long okCount = 0;
        var workers = Enumerable.Range(0, 3).Select(t => Task.Run(() =>
        {
            var buf = new byte[6000];
            for (int i = 0; i < 2000; i++)
            {
                // Pages 16 and up are unmapped: a mix of successes and faults.
                if (dma.Write((ulong)((i * 7 + t) % 20) << 12, buf) == DmaStatus.Ok) Interlocked.Increment(ref okCount);
            }
        })).ToList();
        workers.Add(Task.Run(() =>
        {
            for (int i = 0; i < 2000; i++)
            {
                f.W64(f.Iro + 8, (1UL << 63) | (1UL << 60));
                f.ClearFault(i & 1);
                f.W32(Fsts, 1);
            }
        }));
        await Task.WhenAll(workers);
        Assert.True(okCount > 0);
        Assert.True(f.Unit.Counters.FaultsByReason(VtdFaultReason.WriteNotPermitted).Value > 0);
        Assert.True(f.Unit.IotlbCount <= 8);
    }
}
