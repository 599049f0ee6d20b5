using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>
/// SaveState/RestoreState: a unit restored into a fresh instance over the same RAM behaves from
/// then on exactly as the original (register reads, DMA translation, interrupt remapping, queued
/// invalidation, fault recording and events); a state with a field out of range is refused whole.
/// </summary>
public class VtdStateTests
{
    const ushort Dev = 0x0010;
    const ushort Domain = 3;
    const ulong Queue = 0x40_0000;          // QS=1: 8 KiB, 512 descriptors
    const ulong StatusAddr = 0x41_0000;
    const ulong IrTable = 0x30_0000;
    const ulong Buffer = 0x100_0000;
    const ulong Unmapped = 0x10_0000;
    const int Pages = 16;

    /// <summary>A unit and what it sent: fault/invalidation events and remapped interrupts.</summary>
    sealed record Unit(IntelIommu Iommu, RecordingMsiSink Events, RecordingApicBus Apic)
    {
        public ulong R64(int offset) => Iommu.MmioRead((ulong)offset, 8);
        public void W32(int offset, uint value) => Iommu.MmioWrite((ulong)offset, 4, value);
        public void W64(int offset, ulong value) => Iommu.MmioWrite((ulong)offset, 8, value);

        /// <summary>Every dword of the register block, as the guest reads it.</summary>
        public uint[] Registers()
        {
            var dump = new uint[(int)Iommu.Options.RegionSize / 4];
            for (int i = 0; i < dump.Length; i++) dump[i] = (uint)Iommu.MmioRead((ulong)i * 4, 4);
            return dump;
        }
    }

    /// <summary>
    /// The programmed unit: legacy-mode tables for one device (16 pages), translation on,
    /// queued invalidation with three descriptors processed, interrupt remapping with four IRTEs,
    /// and one DMA fault recorded whose event is pending behind FECTL.IM.
    /// </summary>
    sealed class Bench : IDisposable
    {
        public readonly VtdFixture F;
        public readonly Unit A;
        public readonly ulong Slpt;
        public ulong Tail;

        public Bench(VtdOptions? options = null)
        {
            F = new VtdFixture(options);
            A = new Unit(F.Unit, F.Events, F.Apic);
            Slpt = F.SetContext(Dev, Domain, 4);
            for (ulong p = 0; p < Pages; p++)
            {
                F.Map(Slpt, 4, p << 12, Buffer + (p << 12));
                F.Fill(Buffer + (p << 12), 4096, (byte)(0x40 + p));
            }
            for (int i = 0; i < 4; i++)
            {
                // IRTE (9.10): present, vector 0x50+i, x2APIC destination i+1, SVT=01b SID=Dev.
                F.Ram.WriteU64(IrTable + (ulong)i * 16, 1UL | ((ulong)(0x50 + i) << 16) | ((ulong)(i + 1) << 32));
                F.Ram.WriteU64(IrTable + (ulong)i * 16 + 8, Dev | (1UL << 18));
            }
            F.W64(Iqt, 0);
            F.W64(Iqa, Queue | 1);
            F.Command(Qie);
            F.W64(Irta, IrTable | (1UL << 11) | 7);
            F.Command(Sirtp);
            F.Command(Ire);
            F.EnableTranslation();
            F.W32(Fedata, 0x21);
            F.W32(Feaddr, 0xFEE0_0000);
            F.W32(Iedata, 0x22);
            F.W32(Ieaddr, 0xFEE0_0000);
            Put(1UL | (1UL << 4));                          // context-cache global invalidation
            Put(2UL | (1UL << 4));                          // IOTLB global invalidation
            Put(Wait(1), StatusAddr);
            Submit(A);
            Assert.Equal(48UL, A.R64(Iqh));
            // Warm the caches, remap one interrupt, then fault (kept pending: FECTL.IM is set).
            var buf = new byte[64];
            Assert.Equal(DmaStatus.Ok, A.Iommu.DmaSpaceFor(Dev).Read(0x3000, buf));
            A.Iommu.InterruptRemapper.SendMsi(Remappable(2), 0, Dev);
            Assert.Single(A.Apic.Delivered);
            Assert.Equal(DmaStatus.Blocked, A.Iommu.DmaSpaceFor(Dev).Read(Unmapped, buf));
            Assert.True(F(F.FaultRecord(0).High));
            Assert.Equal(1u << 30, F.R32(Fectl) & (1u << 30));
        }

        public void Dispose() => F.Dispose();

        public static ulong Wait(uint data, bool irq = false) => 5UL | (1UL << 5) | (irq ? 1UL << 4 : 0) | ((ulong)data << 32);

        public void Put(ulong lo, ulong hi = 0)
        {
            F.Ram.WriteU64(Queue + Tail, lo);
            F.Ram.WriteU64(Queue + Tail + 8, hi);
            Tail = (Tail + 16) % 8192;
        }

        public void Submit(Unit u) => u.W64(Iqt, Tail);

        /// <summary>A fresh unit with the same options over the same RAM, restored from <paramref name="state"/>.</summary>
        public Unit Restored(VtdState state)
        {
            var events = new RecordingMsiSink();
            var apic = new RecordingApicBus();
            var unit = new IntelIommu(F.Unit.Options, F.Ram, events, apic);
            unit.RestoreState(state);
            return new Unit(unit, events, apic);
        }
    }

    static ulong Remappable(int handle) => 0xFEE0_0000UL | ((ulong)(handle & 0x7FFF) << 5) | (1UL << 4);

    /// <summary>Runs <paramref name="step"/> on both units and requires the same result and the same registers after.</summary>
    static void Same<T>(Unit a, Unit b, Func<Unit, T> step)
    {
        T ra = step(a);
        T rb = step(b);
        Assert.Equivalent(ra, rb, strict: true);
        Assert.Equal(a.Registers(), b.Registers());
    }

    static (DmaStatus, byte[]) ReadDma(Unit u, ulong address, int length)
    {
        var buf = new byte[length];
        var status = u.Iommu.DmaSpaceFor(Dev).Read(address, buf);
        return (status, buf);
    }

    [Fact]
    public void RestoredUnitBehavesLikeTheOriginal()
    {
        using var bench = new Bench();
        var a = bench.A;
        var state = a.Iommu.SaveState();
        var b = bench.Restored(state);

        Assert.Equal(a.Registers(), b.Registers());
        Assert.Equivalent(state, b.Iommu.SaveState(), strict: true);
        Assert.Equal(0, b.Iommu.IotlbCount);                    // caches are not state
        Assert.Equal(0, b.Iommu.ContextCacheCount);

        // The same DMA addresses translate the same way (and the unmapped one faults the same way).
        for (ulong p = 0; p < Pages; p++)
        {
            Same(a, b, u => ReadDma(u, (p << 12) + 0x10, 100));
        }
        Same(a, b, u => ReadDma(u, (Pages - 1) << 12 | 0xF80, 0x100));    // runs off the last mapped page: blocked
        // The same MSIs are remapped (and a not-present IRTE is blocked and recorded).
        a.Apic.Delivered.Clear();                               // the one remapped before the save
        Same(a, b, u =>
        {
            u.Iommu.InterruptRemapper.SendMsi(Remappable(1), 0, Dev);
            u.Iommu.InterruptRemapper.SendMsi(Remappable(3), 0, Dev);
            u.Iommu.InterruptRemapper.SendMsi(Remappable(9), 0, Dev);
            return u.Apic.Delivered.ToArray();
        });
        // Unmasking the fault event sends the one that was pending at the save.
        Same(a, b, u =>
        {
            u.W32(Fectl, 0);
            return u.Events.Messages.ToArray();
        });

        // Further invalidation descriptors: remap page 5 and invalidate it through the queue.
        bench.F.Map(bench.Slpt, 4, 5 << 12, Buffer + (20 << 12));
        bench.F.Fill(Buffer + (20 << 12), 4096, 0xEE);
        bench.Put(2UL | (3UL << 4) | ((ulong)Domain << 16), 5UL << 12);    // page-selective IOTLB invalidation
        bench.Put(Bench.Wait(2, irq: true), StatusAddr);
        Same(a, b, u =>
        {
            bench.Submit(u);
            return (bench.F.Ram.ReadU32(StatusAddr), u.Events.Messages.ToArray());
        });
        Same(a, b, u => ReadDma(u, 0x5000, 16));
        Assert.Equal(0xEE, ReadDma(b, 0x5000, 1).Item2[0]);

        // Further faults land in the same records: a repeat is compressed, a new one takes the
        // next record, and clearing records and status services the event the same way.
        Same(a, b, u => ReadDma(u, Unmapped, 4));
        Same(a, b, u => ReadDma(u, Unmapped + 0x1000, 4));
        Same(a, b, u =>
        {
            for (int r = 0; r < 8; r++) u.W32(bench.F.Fro + 16 * r + 12, 1u << 31);
            u.W32(Fsts, 0xFF);
            u.Iommu.DmaSpaceFor(0x0300).Write(0x1000, new byte[4]);       // bus 3 has no root entry
            return u.Events.Messages.ToArray();
        });
    }

    [Fact]
    public void RestoreInPlaceDropsTheCaches()
    {
        using var bench = new Bench();
        var a = bench.A;
        var state = a.Iommu.SaveState();
        Assert.True(a.Iommu.IotlbCount > 0);
        // Change a mapping without invalidating: the cached translation still serves the old page...
        bench.F.Map(bench.Slpt, 4, 3 << 12, Buffer + (21 << 12));
        bench.F.Fill(Buffer + (21 << 12), 4096, 0xAB);
        Assert.Equal(0x43, ReadDma(a, 0x3000, 1).Item2[0]);
        // ...until a restore, which starts with every cache empty (always a legal cache state).
        a.Iommu.RestoreState(state);
        Assert.Equal(0, a.Iommu.IotlbCount);
        Assert.Equal(0xAB, ReadDma(a, 0x3000, 1).Item2[0]);
    }

    [Fact]
    public void ScalableModeStateRoundTrips()
    {
        // Only the latched mode and the 256-bit queue differ from legacy mode as far as state goes.
        using var f = new VtdFixture();
        f.W64(Iqa, Queue | (1UL << 11));
        f.Command(Qie);
        f.W64(Rtaddr, RootTable | (1UL << 10));
        f.Command(Srtp);
        f.Ram.WriteU64(Queue, 5UL | (1UL << 5) | (7UL << 32));
        f.Ram.WriteU64(Queue + 8, StatusAddr);
        f.W64(Iqt, 32);
        var state = f.Unit.SaveState();
        Assert.Equal(1, state.ActiveTableMode);
        Assert.True(state.QueueWideDescriptors);
        var b = new IntelIommu(f.Unit.Options, f.Ram, new RecordingMsiSink(), new RecordingApicBus());
        b.RestoreState(state);
        Assert.Equivalent(state, b.SaveState(), strict: true);
        // The next 256-bit descriptor runs from IQH 32 on both.
        f.Ram.WriteU64(Queue + 32, 5UL | (1UL << 5) | (8UL << 32));
        f.Ram.WriteU64(Queue + 40, StatusAddr);
        f.W64(Iqt, 64);
        Assert.Equal(8u, f.Ram.ReadU32(StatusAddr));
        f.Ram.WriteU32(StatusAddr, 0);
        b.MmioWrite(Iqt, 8, 64);
        Assert.Equal(8u, f.Ram.ReadU32(StatusAddr));
        Assert.Equal(64UL, b.MmioRead(Iqh, 8));
    }

    /// <summary>
    /// Saved while the queue waits for a device-TLB invalidation completion (6.5.2.8): the
    /// restored unit holds the same outstanding tag and the same time-out deadline, so the answer
    /// releases the wait on both, and silence ends in the same Invalidation Time-out Error at the
    /// same virtual time (6.5.2.10).
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void QueueWaitingForADeviceRoundTrips(bool deviceAnswers)
    {
        const long Timeout = 1_000_000;
        var options = new VtdOptions { DeviceTlbInvalidationTimeoutNs = Timeout };
        var clockA = new VirtualClock(ClockMode.Deterministic);
        var timersA = new TimerQueue(clockA);
        using var f = new VtdFixture(options, timersA);
        var a = new Unit(f.Unit, f.Events, f.Apic);
        var device = new RecordingAtsEndpoint();
        f.Unit.AttachAtsEndpoint(Dev, device);
        f.W32(Fectl, 0);
        f.W64(Iqa, Queue);
        f.Command(Qie);
        clockA.SkipTo(250_000);
        f.Ram.WriteU64(Queue, 3UL | ((ulong)Dev << 32));               // device-TLB invalidation (6.5.2.5)
        f.Ram.WriteU64(Queue + 16, Bench.Wait(9));
        f.Ram.WriteU64(Queue + 24, StatusAddr);
        f.W64(Iqt, 32);
        Assert.Equal(16UL, a.R64(Iqh));                                  // stalled on the wait
        var state = f.Unit.SaveState();
        Assert.True(state.QueueStalled && state.StalledOnWait);
        Assert.Equal(250_000 + Timeout, state.InvalidationDeadlineNs);
        Assert.Equal(device.AllTags, Assert.Single(state.OutstandingInvalidations).Tags);

        // The destination machine: its own clock at the same virtual time, the device wired first.
        var clockB = new VirtualClock(ClockMode.Deterministic);
        clockB.SkipTo(250_000);
        var timersB = new TimerQueue(clockB);
        var eventsB = new RecordingMsiSink();
        var apicB = new RecordingApicBus();
        var b = new Unit(new IntelIommu(options, f.Ram, eventsB, apicB, timers: timersB), eventsB, apicB);
        b.Iommu.AttachAtsEndpoint(Dev, new RecordingAtsEndpoint());
        b.Iommu.RestoreState(state);
        Assert.Equal(a.Registers(), b.Registers());

        if (deviceAnswers)
        {
            Same(a, b, u =>
            {
                f.Ram.WriteU32(StatusAddr, 0);
                u.Iommu.CompleteDeviceTlbInvalidation(Dev, device.AllTags);
                return f.Ram.ReadU32(StatusAddr);
            });
            Assert.Equal(32UL, b.R64(Iqh));
        }
        else
        {
            foreach (var (clock, timers) in new[] { (clockA, timersA), (clockB, timersB) })
            {
                clock.SkipTo(250_000 + Timeout - 1);
                timers.RunExpired();
            }
            Assert.Equal(a.Registers(), b.Registers());
            Assert.Equal(16UL, b.R64(Iqh));                              // not yet
            Same(a, b, u =>
            {
                var (clock, timers) = u == a ? (clockA, timersA) : (clockB, timersB);
                clock.SkipTo(250_000 + Timeout);
                timers.RunExpired();
                return u.Events.Messages.ToArray();
            });
            Assert.Equal(1u << 6, b.Iommu.MmioRead(Fsts, 4) & (1u << 6)); // ITE
        }
    }

    // ---- refusal ----

    static VtdState WithRegister(VtdState s, int offset, Func<uint, uint> change)
    {
        var registers = (uint[])s.Registers.Clone();
        registers[offset / 4] = change(registers[offset / 4]);
        return s with { Registers = registers };
    }

    public static TheoryData<string> Corruptions() =>
    [
        "version", "length", "rtaddr-beyond-haw", "cap", "reserved-offset", "gsts-unimplemented", "fri", "ppf",
        "ccmd-icc", "fectl-ip-unmasked", "active-root-beyond-haw", "active-root-unaligned", "table-mode",
        "active-root-without-rtps", "active-irta-reserved", "iqh-beyond-queue", "queue-bytes", "queue-base",
        "next-fault", "last-fault-cleared", "duplicate-outstanding", "empty-outstanding", "negative-deadline",
    ];

    static VtdState Corrupt(VtdState s, string what) => what switch
    {
        "version" => s with { Version = 2 },
        "length" => s with { Registers = s.Registers[..^1] },
        "rtaddr-beyond-haw" => WithRegister(s, Rtaddr + 4, v => v | (1u << 13)),       // bit 45, HAW is 39
        "cap" => WithRegister(s, 0x08, v => v ^ 0x100),                                // another SAGAW: another unit
        "reserved-offset" => WithRegister(s, 0x50, _ => 1),
        "gsts-unimplemented" => WithRegister(s, Gsts, v => v | Wbf),
        "fri" => WithRegister(s, Fsts, v => v | (9u << 8)),                            // 8 records
        "ppf" => WithRegister(s, Fsts, v => v & ~2u),
        "ccmd-icc" => WithRegister(s, Ccmd + 4, v => v | (1u << 31)),
        "fectl-ip-unmasked" => WithRegister(s, Fectl, v => v & ~(1u << 31)),
        "active-root-beyond-haw" => s with { ActiveRootTable = 1UL << 40 },
        "active-root-unaligned" => s with { ActiveRootTable = RootTable | 0x800 },
        "table-mode" => s with { ActiveTableMode = 4 },
        "active-root-without-rtps" => WithRegister(s, Gsts, v => v & ~Srtp),
        "active-irta-reserved" => s with { ActiveInterruptRemapTable = s.ActiveInterruptRemapTable | 0x20 },
        "iqh-beyond-queue" => WithRegister(s, Iqh, _ => 0x2000),
        "queue-bytes" => s with { QueueBytes = 3000 },
        "queue-base" => s with { QueueBase = 1UL << 45 },
        "next-fault" => s with { NextFaultIndex = 8 },
        "last-fault-cleared" => s with { LastFaultIndex = 5 },
        "duplicate-outstanding" => s with { OutstandingInvalidations = [new() { RequesterId = Dev, Tags = 1 }, new() { RequesterId = Dev, Tags = 2 }] },
        "empty-outstanding" => s with { OutstandingInvalidations = [new() { RequesterId = Dev, Tags = 0 }] },
        "negative-deadline" => s with { InvalidationDeadlineNs = -1 },
        _ => throw new ArgumentException(what),
    };

    [Theory]
    [MemberData(nameof(Corruptions))]
    public void OutOfRangeFieldIsRefusedAndChangesNothing(string what)
    {
        using var bench = new Bench();
        var a = bench.A;
        var good = a.Iommu.SaveState();
        var bad = Corrupt(good, what);
        var registersBefore = a.Registers();
        var ex = Assert.Throws<InvalidStateException>(() => a.Iommu.RestoreState(bad));
        Assert.Equal("dmar0", ex.Component);
        Assert.DoesNotContain('\n', ex.Message);
        Assert.Equal(registersBefore, a.Registers());
        Assert.Equivalent(good, a.Iommu.SaveState(), strict: true);
        Assert.True(a.Iommu.IotlbCount > 0);                     // not even the caches were dropped
        // And a fresh unit refuses it too, staying at reset.
        var fresh = new IntelIommu(a.Iommu.Options, bench.F.Ram, new RecordingMsiSink(), new RecordingApicBus());
        var resetRegisters = new Unit(fresh, new RecordingMsiSink(), new RecordingApicBus()).Registers();
        Assert.Throws<InvalidStateException>(() => fresh.RestoreState(bad));
        Assert.Equal(resetRegisters, new Unit(fresh, new RecordingMsiSink(), new RecordingApicBus()).Registers());
    }

    [Fact]
    public void TheUnmodifiedStateIsAccepted()
    {
        // The refusal cases above start from this state: it must itself be valid.
        using var bench = new Bench();
        var state = bench.A.Iommu.SaveState();
        bench.A.Iommu.RestoreState(state);
        Assert.Equivalent(state, bench.A.Iommu.SaveState(), strict: true);
    }
}
