using System.Buffers.Binary;
using SharpVisor.Core;
using SharpVisor.Devices.Iommu;
using SharpVisor.Devices.Pci;
using SharpVisor.Devices.Tests.Pci;
using static SharpVisor.Devices.Tests.Iommu.VtdFixture;
using static SharpVisor.Devices.Tests.Iommu.VtdScalableFixture;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>A device's ATS endpoint that records invalidations and answers only when told to.</summary>
sealed class RecordingAtsEndpoint : IAtsEndpoint
{
    public readonly List<(ulong Address, ulong Size, uint? Pasid, byte Tag)> Requests = [];
    public void InvalidateDeviceTlb(ulong address, ulong size, uint? pasid, byte tag) => Requests.Add((address, size, pasid, tag));
    public uint AllTags => Requests.Aggregate(0u, (v, r) => v | (1u << r.Tag));
}

/// <summary>ATS / device-TLBs (VT-d spec chapter 4; invalidation 6.5.2.5, 6.5.2.6, 6.5.2.8, 6.5.2.10).</summary>
public class VtdAtsTests
{
    const ushort Dev = 0x0010;
    const ushort Domain = 4;
    const ulong Iova = 0x10_0000_0000;
    const ulong Target = 0x60_0000;

    /// <summary>Legacy context entry with TT=01b (what Linux writes for an ATS-capable device, CONTEXT_TT_DEV_IOTLB).</summary>
    static ulong LegacyAtsContext(VtdFixture f, int tt = 1)
    {
        ulong slpt = f.SetContext(Dev, Domain, 4, tt: tt);
        f.Map(slpt, 4, Iova, Target);
        f.Map(slpt, 4, Iova + 0x1000, Target + 0x1000, read: true, write: false);
        f.EnableTranslation();
        return slpt;
    }

    [Fact]
    public void TranslationRequestReturnsTheTranslationAndPermissions()
    {
        using var f = new VtdFixture();
        LegacyAtsContext(f);
        var t = f.Unit.AtsTranslate(Dev, null, Iova + 0x123, write: false);
        Assert.Equal(AtsStatus.Success, t.Status);
        Assert.Equal(Target + 0x123, t.TranslatedAddress);
        Assert.Equal(AtsPermissions.Read | AtsPermissions.Write, t.Permissions);
        Assert.Equal(12, t.PageShift);
        var ro = f.Unit.AtsTranslate(Dev, null, Iova + 0x1000, write: true);
        Assert.Equal(AtsPermissions.Read, ro.Permissions);
        // An unmapped page: "no access", not an error, and no fault is recorded (4.2.3).
        var none = f.Unit.AtsTranslate(Dev, null, Iova + 0x5000, write: false);
        Assert.Equal(AtsStatus.Success, none.Status);
        Assert.Equal(AtsPermissions.None, none.Permissions);
        Assert.False(F(f.FaultRecord(0).High));
        Assert.Equal(3, f.Unit.Counters.AtsTranslationRequests.Value);
        Assert.Equal(1, f.Unit.Counters.AtsTranslationDenied.Value);    // only the unmapped page: the RO page still granted Read
    }

    [Fact]
    public void TranslationAndTranslatedRequestsNeedTt01()
    {
        using var f = new VtdFixture();
        LegacyAtsContext(f, tt: 0);
        var t = f.Unit.AtsTranslate(Dev, null, Iova, write: false);
        Assert.Equal(AtsStatus.UnsupportedRequest, t.Status);
        Assert.Equal((int)VtdFaultReason.TranslationTypeBlocked, Reason(f.FaultRecord(0).High));
        f.ClearFault(0);
        f.Fill(Target, 4, 0xAA);
        // A translated request that names host memory directly must not get through TT=00b.
        Assert.Equal(DmaStatus.Blocked, f.Unit.TranslatedDmaWrite(Dev, Target, [1, 2, 3, 4]));
        Assert.All(f.ReadRam(Target, 4), b => Assert.Equal(0xAA, b));
        Assert.Equal((int)VtdFaultReason.TranslationTypeBlocked, Reason(f.FaultRecord(1).High));
        Assert.Equal(1, f.Unit.Counters.TranslatedRequestsBlocked.Value);
    }

    [Fact]
    public void TranslatedRequestsNeedDteInScalableMode()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev, dte: false);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        s.MapFirstLevel(fl, 4, 0x1000, Target);
        s.EnableScalableTranslation();
        Assert.Equal(AtsStatus.UnsupportedRequest, s.Unit.AtsTranslate(Dev, null, 0x1000, false).Status);
        Assert.Equal((int)VtdFaultReason.SmDeviceTlbDisabled, Reason(s.F.FaultRecord(0).High));
        Assert.Equal(DmaStatus.Blocked, s.Unit.TranslatedDmaRead(Dev, Target, new byte[4]));
        // The interrupt range is never reachable with a translated request.
        using var t = new VtdScalableFixture();
        t.SetContext(Dev, dte: true);
        t.EnableScalableTranslation();
        Assert.Equal(DmaStatus.Blocked, t.Unit.TranslatedDmaWrite(Dev, 0xFEE0_0000, new byte[4]));
    }

    [Fact]
    public void FirstLevelWriteTranslationSetsDirtyBeforeGrantingWrite()
    {
        using var s = new VtdScalableFixture();
        ulong dir = s.SetContext(Dev, dte: true);
        ulong fl = s.SetFirstLevel(dir, 0, Domain);
        ulong leaf = s.MapFirstLevel(fl, 4, 0x1000, Target);
        s.EnableScalableTranslation();
        var read = s.Unit.AtsTranslate(Dev, null, 0x1000, write: false);
        Assert.Equal(AtsPermissions.Read, read.Permissions);           // D clear: no W handed out
        Assert.Equal(0UL, s.Ram.ReadU64(leaf) & FlD);
        var write = s.Unit.AtsTranslate(Dev, null, 0x1000, write: true);
        Assert.Equal(AtsPermissions.Read | AtsPermissions.Write, write.Permissions);
        Assert.NotEqual(0UL, s.Ram.ReadU64(leaf) & FlD);
    }

    [Fact]
    public void DeviceIotlbCachesAndUsesTranslatedRequests()
    {
        using var f = new VtdFixture();
        LegacyAtsContext(f);
        var tlb = new DeviceIotlb("nic0");
        var dma = new AtsDmaSpace(f.Unit, Dev, tlb);
        dma.Attach();
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova + 0x10, [1, 2]));
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova + 0x20, [3]));
        var back = new byte[2];
        Assert.Equal(DmaStatus.Ok, dma.Read(Iova + 0x10, back));
        Assert.Equal(new byte[] { 1, 2 }, back);
        Assert.Equal(3, f.ReadRam(Target + 0x20, 1)[0]);
        Assert.Equal(1, tlb.Misses.Value);
        Assert.Equal(2, tlb.Hits.Value);
        Assert.Equal(1, f.Unit.Counters.AtsTranslationRequests.Value);
        Assert.Equal(3, f.Unit.Counters.TranslatedRequests.Value);
        // A page the unit refuses: the device falls back to an untranslated request, which faults.
        f.Fill(Target + 0x1000, 4, 0xAA);
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova + 0x1000, [9]));
        Assert.Equal(0xAA, f.ReadRam(Target + 0x1000, 1)[0]);
        Assert.Equal((int)VtdFaultReason.WriteNotPermitted, Reason(f.FaultRecord(0).High));
    }

    [Fact]
    public void DeviceTlbInvalidationReachesTheDeviceAndUnmapsForIt()
    {
        using var f = new VtdFixture();
        ulong slpt = LegacyAtsContext(f);
        var tlb = new DeviceIotlb("nic0");
        var dma = new AtsDmaSpace(f.Unit, Dev, tlb);
        dma.Attach();
        var b = new QueueBench(f);
        Assert.Equal(DmaStatus.Ok, dma.Write(Iova, [1]));
        // Unmap, then the Linux order: IOTLB invalidation, device-TLB invalidation, wait.
        ulong leaf = f.Map(slpt, 4, Iova, Target);
        f.Ram.WriteU64(leaf, 0);
        Assert.True(b.Run(7, (IotlbDesc(2, Domain), 0), (DeviceTlbDesc(Dev), Iova)));
        Assert.Equal(1, tlb.Invalidations.Value);
        Assert.Equal(0, tlb.Count);
        Assert.Equal(DmaStatus.Blocked, dma.Write(Iova, [2]));
        Assert.Equal(1, f.ReadRam(Target, 1)[0]);
        Assert.Equal(1, f.Unit.Counters.DeviceTlbCompletions.Value);
    }

    [Fact]
    public void WaitCompletesOnlyAfterTheDeviceAnswers()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var timers = new TimerQueue(clock);
        using var f = new VtdFixture(null, timers);
        LegacyAtsContext(f);
        var device = new RecordingAtsEndpoint();
        f.Unit.AttachAtsEndpoint(Dev, device);
        var b = new QueueBench(f);
        // S=1 with address bit 12 clear: an 8 KiB range; bits 12,13 set and 14 clear: 32 KiB.
        Assert.False(b.Run(5, (DeviceTlbDesc(Dev), 0x4000_2000 | 1), (DeviceTlbDesc(Dev), 0x4000_3000 | 1)));
        Assert.Equal(2, device.Requests.Count);
        Assert.Equal((0x4000_2000UL, 0x2000UL, (uint?)null), (device.Requests[0].Address, device.Requests[0].Size, device.Requests[0].Pasid));
        Assert.Equal((0x4000_0000UL, 0x8000UL), (device.Requests[1].Address, device.Requests[1].Size));
        Assert.NotEqual(device.Requests[0].Tag, device.Requests[1].Tag);
        Assert.Equal(b.Tail - 16, f.R64(Iqh));                 // stalled on the wait descriptor
        // One coalesced completion answering both tags releases the wait.
        f.Unit.CompleteDeviceTlbInvalidation(Dev, device.AllTags);
        Assert.Equal(5u, f.Ram.ReadU32(StatusAddr));
        Assert.Equal(b.Tail, f.R64(Iqh));
        Assert.Equal(0u, f.R32(Fsts) & (1u << 6));
        Assert.Equal(2, f.Unit.Counters.DeviceTlbCompletions.Value);
    }

    [Fact]
    public void DeviceThatNeverAnswersTimesOutInVirtualTime()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var timers = new TimerQueue(clock);
        using var f = new VtdFixture(new VtdOptions { DeviceTlbInvalidationTimeoutNs = 1_000_000 }, timers);
        LegacyAtsContext(f);
        var device = new RecordingAtsEndpoint();
        f.Unit.AttachAtsEndpoint(Dev, device);
        f.W32(Fectl, 0);                                        // fault events unmasked
        var b = new QueueBench(f);
        Assert.False(b.Run(5, (DeviceTlbDesc(Dev), Iova)));
        clock.SkipTo(999_999);
        timers.RunExpired();
        Assert.Equal(0u, f.R32(Fsts) & (1u << 6));              // not yet
        clock.SkipTo(1_000_000);
        timers.RunExpired();
        Assert.NotEqual(0u, f.R32(Fsts) & (1u << 6));           // ITE
        Assert.Equal(0u, f.Ram.ReadU32(StatusAddr));            // the wait was aborted, not completed
        Assert.Equal(b.Tail, f.R64(Iqh));                       // IQH moved past the aborted wait
        Assert.Single(f.Events.Messages);                       // one fault event
        Assert.Equal(1, f.Unit.Counters.DeviceTlbTimeouts.Value);
        // The late answer is ignored; after software clears ITE the queue runs again.
        f.Unit.CompleteDeviceTlbInvalidation(Dev, device.AllTags);
        Assert.Equal(1, f.Unit.Counters.DeviceTlbLateCompletions.Value);
        f.W32(Fsts, 1u << 6);
        Assert.True(b.Run(6));
    }

    [Fact]
    public void WithoutATimerQueueASilentDeviceTimesOutAtOnce()
    {
        using var f = new VtdFixture();
        LegacyAtsContext(f);
        f.Unit.AttachAtsEndpoint(Dev, new RecordingAtsEndpoint());
        var b = new QueueBench(f);
        Assert.False(b.Run(5, (DeviceTlbDesc(Dev), Iova)));
        Assert.NotEqual(0u, f.R32(Fsts) & (1u << 6));
    }

    [Fact]
    public void ThirtyTwoTagsPerDeviceThenTheQueueWaits()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        using var f = new VtdFixture(null, new TimerQueue(clock));
        LegacyAtsContext(f);
        var device = new RecordingAtsEndpoint();
        f.Unit.AttachAtsEndpoint(Dev, device);
        var b = new QueueBench(f);
        var descs = Enumerable.Range(0, 33).Select(i => (DeviceTlbDesc(Dev), Iova + (ulong)i * 0x1000)).ToArray();
        Assert.False(b.Run(9, descs));
        Assert.Equal(32, device.Requests.Count);
        Assert.Equal(32, device.Requests.Select(r => r.Tag).Distinct().Count());
        f.Unit.CompleteDeviceTlbInvalidation(Dev, 1u << device.Requests[0].Tag);
        Assert.Equal(33, device.Requests.Count);                // the 33rd reused the freed tag
        Assert.Equal(device.Requests[0].Tag, device.Requests[32].Tag);
        f.Unit.CompleteDeviceTlbInvalidation(Dev, uint.MaxValue);
        Assert.Equal(9u, f.Ram.ReadU32(StatusAddr));
    }

    [Fact]
    public void TimeOutWhileShortOfTagsKeepsTheInvalidationForLater()
    {
        var clock = new VirtualClock(ClockMode.Deterministic);
        var timers = new TimerQueue(clock);
        using var f = new VtdFixture(new VtdOptions { DeviceTlbInvalidationTimeoutNs = 1000 }, timers);
        LegacyAtsContext(f);
        var device = new RecordingAtsEndpoint();
        f.Unit.AttachAtsEndpoint(Dev, device);
        var b = new QueueBench(f);
        var descs = Enumerable.Range(0, 33).Select(i => (DeviceTlbDesc(Dev), Iova + (ulong)i * 0x1000)).ToArray();
        Assert.False(b.Run(9, descs));
        ulong stalledAt = f.R64(Iqh);
        Assert.Equal(32UL * 16, stalledAt);                     // on the 33rd descriptor
        clock.SkipTo(1000);
        timers.RunExpired();
        Assert.NotEqual(0u, f.R32(Fsts) & (1u << 6));           // ITE
        Assert.Equal(stalledAt, f.R64(Iqh));                    // not skipped: it has not reached the device
        f.W32(Fsts, 1u << 6);                                   // software clears ITE: the queue resumes
        Assert.Equal(33, device.Requests.Count);
        Assert.Equal(Iova + 32 * 0x1000, device.Requests[32].Address);
    }

    [Fact]
    public void PasidBasedDeviceTlbInvalidationCarriesThePasid()
    {
        using var s = new VtdScalableFixture();
        s.EnableWideQueue();
        var device = new RecordingAtsEndpoint();
        s.Unit.AttachAtsEndpoint(Dev, device);
        // Answer synchronously, as a device model calling back from its endpoint would.
        var answering = new AnsweringEndpoint(s.Unit, Dev, device);
        s.Unit.AttachAtsEndpoint(Dev, answering);
        Assert.True(s.Run(3, (PasidDeviceTlbDesc(Dev, 0x42), 0x8000 | (1UL << 11)), (DeviceTlbDesc(Dev), 0x5000)));
        Assert.Equal(2, device.Requests.Count);
        Assert.Equal((0x8000UL, 0x2000UL, (uint?)0x42), (device.Requests[0].Address, device.Requests[0].Size, device.Requests[0].Pasid));
        Assert.Null(device.Requests[1].Pasid);
        Assert.Equal(1, s.Unit.Counters.DeviceTlbInvPasid.Value);
    }

    [Fact]
    public void DeviceIotlbIsBoundedAndInvalidatesByPasid()
    {
        var tlb = new DeviceIotlb("dev", sets: 2, ways: 2);
        for (ulong i = 0; i < 16; i++)
        {
            tlb.Insert(null, i << 12, new AtsTranslation(AtsStatus.Success, 0x100_0000 + (i << 12), AtsPermissions.Read, 12));
        }
        Assert.Equal(4, tlb.Count);
        Assert.True(tlb.Evictions.Value >= 12);
        tlb.Clear();
        tlb.Insert(5, 0x20_0000, new AtsTranslation(AtsStatus.Success, 0x40_0000, AtsPermissions.Read | AtsPermissions.Write, 21));
        tlb.Insert(null, 0x20_0000, new AtsTranslation(AtsStatus.Success, 0x80_0000, AtsPermissions.Read, 12));
        Assert.True(tlb.TryTranslate(5, 0x21_0010, AtsPermissions.Write, out ulong t, out _));
        Assert.Equal(0x41_0010UL, t);
        Assert.False(tlb.TryTranslate(null, 0x20_0000, AtsPermissions.Write, out _, out _));   // read-only entry
        tlb.Invalidate(0x20_1000, 0x1000, 5);        // overlaps the 2 MiB PASID 5 page
        Assert.False(tlb.TryTranslate(5, 0x21_0010, AtsPermissions.Read, out _, out _));
        Assert.True(tlb.TryTranslate(null, 0x20_0000, AtsPermissions.Read, out _, out _));
        tlb.Insert(null, 0x1000, new AtsTranslation(AtsStatus.Success, 0, AtsPermissions.None, 12));   // denials are not cached
        Assert.Equal(1, tlb.Count);
    }

    [Fact]
    public void DmarTableCarriesAnAllPortsAtsr()
    {
        byte[] t = DmarTable.Build(new VtdOptions(), 0, 0xF0F8, DmarTable.Flags.InterruptRemapping, includeAtsr: true);
        Assert.Equal(0, t.Aggregate(0, (sum, x) => (sum + x) & 0xFF));
        int at = t.Length - 8;
        Assert.Equal(2, BinaryPrimitives.ReadUInt16LittleEndian(t.AsSpan(at)));      // type 2: ATSR (8.5)
        Assert.Equal(8, BinaryPrimitives.ReadUInt16LittleEndian(t.AsSpan(at + 2)));
        Assert.Equal(1, t[at + 4]);                                                  // ALL_PORTS
        Assert.Equal(t.Length, (int)BinaryPrimitives.ReadUInt32LittleEndian(t.AsSpan(4)));
    }

    /// <summary>An IOMMU-backed bus with device-TLBs, as the board wires it when ECAP.DT is set.</summary>
    sealed class AtsProvider(IntelIommu unit) : IDmaSpaceProvider, IAtsDmaSpaceProvider
    {
        public readonly List<AtsDmaSpace> Ports = [];
        public IDmaSpace ForRequester(ushort requesterId) => unit.DmaSpaceFor(requesterId);
        public IAtsPort CreateAtsPort(ushort requesterId, string name)
        {
            var port = new AtsDmaSpace(unit, requesterId, new DeviceIotlb(name));
            Ports.Add(port);
            return port;
        }
    }

    /// <summary>A PCI function with the ATS capability at 00:02.0 (requester id <see cref="Dev"/>), bus mastering on.</summary>
    static (TestFunction Function, PciBus Bus, AtsDmaSpace Port) AtsFunction(VtdFixture f)
    {
        var provider = new AtsProvider(f.Unit);
        var host = new PciHostBridge(new PhysicalMemoryMap(f.Ram), new PortBus(), null, provider, busCount: 1);
        var function = new TestFunction();
        function.AddAtsCapability();
        host.Bus.Add(function, Dev >> 3, 0);
        host.Bus.ConfigWrite(0, Dev, PciConfig.Command, 2, (uint)PciCommand.BusMaster);
        return (function, host.Bus, Assert.Single(provider.Ports));
    }

    static void WriteAtsControl(PciBus bus, TestFunction function, uint value) =>
        bus.ConfigWrite(0, Dev, function.AtsCapabilityOffset + 6, 2, value);

    [Fact]
    public void AtsEnableSwitchesTheFunctionsDmaToTranslationRequests()
    {
        using var f = new VtdFixture();
        LegacyAtsContext(f);
        var (function, bus, port) = AtsFunction(f);
        // ATS disabled: untranslated requests, as without the capability.
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova, [1]));
        Assert.Equal(0, f.Unit.Counters.AtsTranslationRequests.Value);
        Assert.Equal(0, f.Unit.Counters.TranslatedRequests.Value);

        WriteAtsControl(bus, function, 0x8000);                 // Linux pci_enable_ats(pdev, 12): Enable, STU 0
        Assert.True(function.AtsEnabled);
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova + 1, [2]));
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova + 2, [3]));
        Assert.Equal(new byte[] { 1, 2, 3 }, f.ReadRam(Target, 3));
        Assert.Equal(1, f.Unit.Counters.AtsTranslationRequests.Value);   // the second write hit the device-TLB
        Assert.Equal(2, f.Unit.Counters.TranslatedRequests.Value);
        Assert.Equal(1, port.Tlb.Hits.Value);
        Assert.Contains(function.Counters, c => c.Name == "pci.test.devtlb.hits" && c.Value == 1);

        // Bus Master Enable still gates the ATS path.
        bus.ConfigWrite(0, Dev, PciConfig.Command, 2, 0);
        Assert.Equal(DmaStatus.Blocked, function.DmaSpace.Write(Iova, [9]));
        Assert.Equal(1, f.ReadRam(Target, 1)[0]);
        bus.ConfigWrite(0, Dev, PciConfig.Command, 2, (uint)PciCommand.BusMaster);

        WriteAtsControl(bus, function, 0);                      // pci_disable_ats
        Assert.False(function.AtsEnabled);
        Assert.Equal(0, port.Tlb.Count);                        // nothing cached while disabled
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova + 3, [4]));
        Assert.Equal(1, f.Unit.Counters.AtsTranslationRequests.Value);
        Assert.Equal(2, f.Unit.Counters.TranslatedRequests.Value);
        Assert.Equal(4, f.ReadRam(Target + 3, 1)[0]);
    }

    [Fact]
    public void SmallestTranslationUnitAbovePageSizeKeepsFourKiBTranslationsOutOfTheDeviceTlb()
    {
        using var f = new VtdFixture();
        LegacyAtsContext(f);
        var (function, bus, port) = AtsFunction(f);
        WriteAtsControl(bus, function, 0x8000 | 9);             // STU 9: 2 MiB
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova, [1]));
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova + 1, [2]));
        Assert.Equal(2, f.Unit.Counters.AtsTranslationRequests.Value);   // 4 KiB answers were not cached
        Assert.Equal(0, port.Tlb.Count);
        Assert.Equal(new byte[] { 1, 2 }, f.ReadRam(Target, 2));
    }

    [Fact]
    public void DeviceTlbInvalidationReachesThePciFunctionBeforeTheWaitCompletes()
    {
        using var f = new VtdFixture();
        ulong slpt = LegacyAtsContext(f);
        var (function, bus, port) = AtsFunction(f);
        WriteAtsControl(bus, function, 0x8000);
        var b = new QueueBench(f);
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova, [1]));
        Assert.Equal(1, port.Tlb.Count);
        // Unmap in memory only: the device-TLB still holds the translation and would keep writing.
        ulong leaf = f.Map(slpt, 4, Iova, Target);
        f.Ram.WriteU64(leaf, 0);
        Assert.True(b.Run(3, (IotlbDesc(2, Domain), 0)));
        Assert.Equal(DmaStatus.Ok, function.DmaSpace.Write(Iova, [2]));
        Assert.Equal(2, f.ReadRam(Target, 1)[0]);

        // The device-TLB invalidation: the wait descriptor's status is written only once the
        // function has answered, and by then its device-TLB no longer holds the page.
        Assert.True(b.Run(7, (DeviceTlbDesc(Dev), Iova)));
        Assert.Equal(1, port.Tlb.Invalidations.Value);
        Assert.Equal(0, port.Tlb.Count);
        Assert.Equal(1, f.Unit.Counters.DeviceTlbInvForwarded.Value);
        Assert.Equal(1, f.Unit.Counters.DeviceTlbCompletions.Value);
        Assert.Equal(DmaStatus.Blocked, function.DmaSpace.Write(Iova, [3]));
        Assert.Equal(2, f.ReadRam(Target, 1)[0]);

        // With ATS disabled the function is no longer an endpoint: invalidations complete at once.
        WriteAtsControl(bus, function, 0);
        Assert.True(b.Run(8, (DeviceTlbDesc(Dev), Iova)));
        Assert.Equal(1, port.Tlb.Invalidations.Value);
        Assert.Equal(1, f.Unit.Counters.DeviceTlbInvNoEndpoint.Value);
    }

    sealed class AnsweringEndpoint(IntelIommu unit, ushort rid, RecordingAtsEndpoint log) : IAtsEndpoint
    {
        public void InvalidateDeviceTlb(ulong address, ulong size, uint? pasid, byte tag)
        {
            log.InvalidateDeviceTlb(address, size, pasid, tag);
            unit.CompleteDeviceTlbInvalidation(rid, 1u << tag);
        }
    }

    /// <summary>A 128-bit invalidation queue (legacy mode) with a status-writing wait after each batch.</summary>
    sealed class QueueBench
    {
        const ulong Queue = 0x3F0_0000;
        readonly VtdFixture _f;
        ulong _tail;

        public QueueBench(VtdFixture f)
        {
            _f = f;
            f.W64(Iqt, 0);
            f.W64(Iqa, Queue);
            f.Command(Qie);
        }

        public ulong Tail => _tail;

        public bool Run(uint data, params (ulong Q0, ulong Q1)[] descriptors)
        {
            _f.Ram.WriteU32(StatusAddr, 0);
            foreach (var (q0, q1) in descriptors.Append((Wait(data), StatusAddr)))
            {
                _f.Ram.WriteU64(Queue + _tail, q0);
                _f.Ram.WriteU64(Queue + _tail + 8, q1);
                _tail = (_tail + 16) % 4096;
            }
            _f.W64(Iqt, _tail);
            return _f.Ram.ReadU32(StatusAddr) == data;
        }
    }
}
