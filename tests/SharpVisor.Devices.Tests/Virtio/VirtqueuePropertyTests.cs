using CsCheck;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

/// <summary>
/// Random descriptor tables and rings from a hostile driver, fed through the whole transport (a
/// virtio-rng, which writes every writable byte it is given, up to 4 KiB per buffer). Properties:
/// nothing throws; the work is bounded; the device writes only into buffers the driver marked
/// device-writable or into the used ring; the queue ends in valid completions or NEEDS_RESET.
/// </summary>
public class VirtqueuePropertyTests
{
    const ulong Data = 0x20_0000;      // 32 buffers of 0x400
    const ulong Indirect = 0x30_0000;  // one 16-entry indirect table

    static ulong PickAddress(uint w, ulong ringBase) => (w & 3) switch
    {
        0 => Data + (w >> 8) % 32 * 0x400 + (w >> 16 & 0x1F),
        1 => Indirect,
        2 => (ulong)w << (int)(w >> 27),      // anywhere, often not RAM
        _ => ringBase + (w >> 4 & 0xFF),       // over the rings themselves
    };

    static uint PickLength(uint w) => (w >> 2 & 7) switch
    {
        0 => 0,
        1 => 1,
        2 => 16,
        3 => 48,
        4 => 0x400,
        5 => 0xFFFF_FFFF,
        6 => 0x8000_0000,
        _ => w >> 12,
    };

    static bool Overlaps(ulong address, uint length, ulong start, ulong count) =>
        address < start + count && (address + length < address || address + length > start);

    [Fact]
    public void Hostile_rings_never_throw_hang_or_write_outside_writable_buffers()
    {
        int completedRuns = 0, resetRuns = 0;
        Gen.Select(Gen.Int[0, 4], Gen.Bool, Gen.Bool, Gen.UInt.Array[160])
            .Sample((sizeLog, eventIdx, indirect, w) =>
            {
                ushort size = (ushort)(1 << sizeLog);
                var dma = new CheckingDmaProvider();
                using var d = new VirtioTestDriver(new VirtioEntropy(), dma);
                ulong features = d.ReadDeviceFeatures();
                if (!eventIdx)
                {
                    features &= ~(1UL << VirtioPci.FeatureRingEventIdx);
                }
                if (!indirect)
                {
                    features &= ~(1UL << VirtioPci.FeatureRingIndirectDesc);
                }
                d.Start(features, queueSize: size);
                var q = d.Queues[0];
                var writable = new List<(ulong Address, ulong Length)>();
                int k = 0;
                uint Next() => w[k++ % w.Length];
                void Fill(ulong table, int count, int nextLimit)
                {
                    for (int i = 0; i < count; i++)
                    {
                        ulong address = PickAddress(Next(), q.Desc);
                        uint length = PickLength(Next());
                        uint f = Next();
                        ushort flags = (ushort)(f & 7);
                        // The device may legitimately overwrite whatever the driver marks writable. A
                        // writable buffer over a descriptor table would change the chains under this
                        // test's model, and one over the rings would fill them with random bytes that
                        // the used-ring checks below then read as completions (seed 4QiBRrbHPL31): keep
                        // writable buffers off the tables and the rings (split-ring sizes, virtio 1.2 2.7).
                        if (Overlaps(address, length, q.Desc, 16UL * size) || Overlaps(address, length, Indirect, 256)
                            || Overlaps(address, length, q.Avail, 6UL + 2UL * size) || Overlaps(address, length, q.Used, 6UL + 8UL * size))
                        {
                            flags &= unchecked((ushort)~Virtqueue.DescFlagWrite);
                        }
                        // An indirect descriptor elsewhere than this test's table makes the device read
                        // whatever lies there as descriptors — a table's own entries seen at an offset,
                        // say — and those may legitimately mark other memory writable, which this
                        // model does not track (seed 6z_KjtFnRSS1: a write at 0x30). Point them at the table.
                        if ((flags & Virtqueue.DescFlagIndirect) != 0)
                        {
                            address = Indirect;
                        }
                        ushort next = (ushort)((f >> 8) % (uint)(nextLimit + 2));
                        q.WriteDescriptor(table, i, address, length, flags, next);
                        if ((flags & Virtqueue.DescFlagWrite) != 0 && (flags & Virtqueue.DescFlagIndirect) == 0)
                        {
                            writable.Add((address, length));
                        }
                    }
                }
                Fill(q.Desc, size, size);
                Fill(Indirect, 16, 16);
                for (int i = 0; i < size; i++)
                {
                    q.PublishHead((ushort)(Next() % (size + 1u)));
                }
                ushort availIndex = (ushort)(Next() % (2u * size + 2));
                q.SetAvailIndex(availIndex);

                ulong usedEnd = q.Used + 6 + 8UL * size;
                var stray = new List<(ulong, int)>();
                dma.OnWrite = (address, length) =>
                {
                    bool inUsed = address >= q.Used && address + (ulong)length <= usedEnd;
                    bool inBuffer = writable.Any(b => address >= b.Address && address - b.Address + (ulong)length <= b.Length);
                    if (!inUsed && !inBuffer)
                    {
                        stray.Add((address, length));
                    }
                };
                dma.Accesses = 0;
                q.Notify();
                q.Notify();

                Assert.True(stray.Count == 0, $"stray writes {string.Join(", ", stray.Select(x => $"0x{x.Item1:x}+{x.Item2}"))}");
                // Bounded: a few accesses per descriptor and per 4 KiB written, never more.
                Assert.True(dma.Accesses < 64L * (size + 16) * 4, $"{dma.Accesses} DMA accesses");
                bool needsReset = (d.Status & VirtioPci.StatusNeedsReset) != 0;
                int completions = 0;
                while (q.TakeUsed() is { } used)
                {
                    completions++;
                    Assert.True(used.Id < size);
                    Assert.True(used.Length <= VirtioEntropy.MaxBytesPerRequest);
                }
                Assert.True(completions <= size);
                // Either every published chain completed, or the device stopped in NEEDS_RESET.
                Assert.True(needsReset || completions == availIndex, $"{completions} of {availIndex} completed without NEEDS_RESET");
                if (needsReset)
                {
                    resetRuns++;
                }
                else if (completions > 0)
                {
                    completedRuns++;
                }
                if (availIndex > size)
                {
                    Assert.True(needsReset);
                }
            }, iter: 400, threads: 1);
        // The generator must reach both outcomes, or the properties above prove little.
        Assert.True(completedRuns > 0 && resetRuns > 0, $"completed {completedRuns}, reset {resetRuns}");
    }
}
