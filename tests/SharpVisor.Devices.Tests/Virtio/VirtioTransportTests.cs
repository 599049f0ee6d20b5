using SharpVisor.Devices.Pci;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

public class VirtioTransportTests
{
    [Fact]
    public void Identity_and_capabilities_are_what_virtio_pci_modern_probe_looks_for()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        // vp_modern_probe: device ID 0x1040+type (0x1044 rng), vendor 0x1AF4, revision 1 (4.1.2.1).
        Assert.Equal(VirtioPci.VirtioVendorId, d.Cfg(PciConfig.VendorId, 2));
        Assert.Equal(0x1044u, d.Cfg(PciConfig.DeviceId, 2));
        Assert.Equal(1u, d.Cfg(PciConfig.RevisionId, 1));
        foreach (byte type in new[] { VirtioPci.CapCommonCfg, VirtioPci.CapNotifyCfg, VirtioPci.CapIsrCfg, VirtioPci.CapPciCfg })
        {
            Assert.True(d.Caps.ContainsKey(type), $"capability type {type}");
        }
        var common = d.Caps[VirtioPci.CapCommonCfg];
        Assert.Equal(VirtioPci.BarIndex, common.Bar);
        Assert.True(common.Length >= 0x38); // sizeof(struct virtio_pci_common_cfg) in Linux 6.1
        Assert.Equal(4u, d.NotifyMultiplier);
        // The BAR is a 64-bit memory BAR (type 10b) and got an address.
        Assert.Equal(0x4u, d.Cfg(PciConfig.Bar0 + 4 * VirtioPci.BarIndex, 4) & 0x6);
        Assert.NotEqual(0UL, d.BarBase);
    }

    [Fact]
    public void Offered_features_include_version_1_access_platform_indirect_and_event_idx()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        ulong f = d.ReadDeviceFeatures();
        foreach (int bit in new[] { VirtioPci.FeatureVersion1, VirtioPci.FeatureAccessPlatform, VirtioPci.FeatureRingIndirectDesc, VirtioPci.FeatureRingEventIdx })
        {
            Assert.NotEqual(0UL, f & 1UL << bit);
        }
        // Windows beyond 1 read 0.
        d.CommonWrite(VirtioPci.DeviceFeatureSelect, 4, 2);
        Assert.Equal(0UL, d.Common(VirtioPci.DeviceFeature, 4));
    }

    [Fact]
    public void Features_ok_is_refused_for_unoffered_bits_or_without_version_1()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        ulong offered = d.ReadDeviceFeatures();
        Assert.False(d.Negotiate(offered | 1UL << 40));
        Assert.False(d.Negotiate(offered & ~(1UL << VirtioPci.FeatureVersion1)));
        Assert.Equal(2, d.Transport.FeatureNegotiationFailures.Value);
        Assert.True(d.Negotiate(offered));
        // Frozen after FEATURES_OK.
        d.WriteDriverFeatures(0);
        Assert.Equal(offered, d.Transport.NegotiatedFeatures);
    }

    [Fact]
    public void Full_handshake_reaches_driver_ok_with_msix_vectors()
    {
        using var d = new VirtioTestDriver(new VirtioConsole());
        d.Start();
        Assert.Equal(VirtioPci.StatusAcknowledge | VirtioPci.StatusDriver | VirtioPci.StatusFeaturesOk | VirtioPci.StatusDriverOk, d.Status);
        Assert.Equal(2, d.Queues.Length);
        // A queue that does not exist reads size 0 (Linux's setup_vq: "!num" → -ENOENT).
        d.CommonWrite(VirtioPci.QueueSelect, 2, 7);
        Assert.Equal(0UL, d.Common(VirtioPci.QueueSize, 2));
        // An impossible vector reads back NO_VECTOR (vp_modern_config_vector's check).
        d.CommonWrite(VirtioPci.ConfigMsixVector, 2, 100);
        Assert.Equal(VirtioPci.NoVector, d.Common(VirtioPci.ConfigMsixVector, 2));
    }

    [Fact]
    public void Reset_clears_status_queues_and_vectors()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        d.CommonWrite(VirtioPci.DeviceStatus, 1, 0);
        Assert.Equal(0, d.Status);
        d.CommonWrite(VirtioPci.QueueSelect, 2, 0);
        Assert.Equal(0UL, d.Common(VirtioPci.QueueEnable, 2));
        Assert.Equal(VirtioPci.NoVector, d.Common(VirtioPci.QueueMsixVector, 2));
        Assert.Equal(VirtioPci.NoVector, d.Common(VirtioPci.ConfigMsixVector, 2));
        Assert.Equal(0UL, d.Common(VirtioPci.QueueDesc, 4));
        // The driver can start again from scratch (Linux does this on every probe and rmmod/insmod).
        d.Start();
        Assert.Equal(VirtioPci.StatusDriverOk, d.Status & VirtioPci.StatusDriverOk);
    }

    [Fact]
    public void Driver_cannot_set_or_clear_needs_reset()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        d.AddStatus(VirtioPci.StatusNeedsReset);
        Assert.Equal(0, d.Status & VirtioPci.StatusNeedsReset);
    }

    [Fact]
    public void Queue_with_bad_size_or_unaligned_ring_is_not_enabled_and_needs_reset()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        Assert.True(d.Negotiate(d.ReadDeviceFeatures()));
        d.CommonWrite(VirtioPci.QueueSelect, 2, 0);
        d.CommonWrite(VirtioPci.QueueSize, 2, 48); // not a power of two
        d.CommonWrite(VirtioPci.QueueDesc, 8, 0x10_0000);
        d.CommonWrite(VirtioPci.QueueDriver, 8, 0x11_0000);
        d.CommonWrite(VirtioPci.QueueDevice, 8, 0x12_0000);
        d.CommonWrite(VirtioPci.QueueEnable, 2, 1);
        Assert.Equal(0UL, d.Common(VirtioPci.QueueEnable, 2));
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);

        Assert.True(d.Negotiate(d.ReadDeviceFeatures()));
        d.CommonWrite(VirtioPci.QueueSelect, 2, 0);
        d.CommonWrite(VirtioPci.QueueSize, 2, 16);
        d.CommonWrite(VirtioPci.QueueDesc, 8, 0x10_0008); // descriptor table must be 16-aligned
        d.CommonWrite(VirtioPci.QueueDriver, 8, 0x11_0000);
        d.CommonWrite(VirtioPci.QueueDevice, 8, 0x12_0000);
        d.CommonWrite(VirtioPci.QueueEnable, 2, 1);
        Assert.Equal(0UL, d.Common(VirtioPci.QueueEnable, 2));

        Assert.True(d.Negotiate(d.ReadDeviceFeatures()));
        d.CommonWrite(VirtioPci.QueueSelect, 2, 0);
        d.CommonWrite(VirtioPci.QueueDesc, 8, 0xFFFF_F000); // not RAM
        d.CommonWrite(VirtioPci.QueueDriver, 8, 0x11_0000);
        d.CommonWrite(VirtioPci.QueueDevice, 8, 0x12_0000);
        d.CommonWrite(VirtioPci.QueueEnable, 2, 1);
        Assert.Equal(0UL, d.Common(VirtioPci.QueueEnable, 2));
    }

    [Fact]
    public void Chain_loop_sets_needs_reset_with_config_interrupt_and_ignores_later_notifies()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        var q = d.Queues[0];
        ulong buf = d.Allocate(64);
        // Two descriptors pointing at each other.
        q.WriteDescriptor(q.Desc, 0, buf, 16, Virtqueue.DescFlagWrite | Virtqueue.DescFlagNext, 1);
        q.WriteDescriptor(q.Desc, 1, buf + 16, 16, Virtqueue.DescFlagWrite | Virtqueue.DescFlagNext, 0);
        q.PublishHead(0);
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
        Assert.Equal(1, d.MsiCount(0)); // config vector
        Assert.Equal(0, q.UsedIndex);
        Assert.Equal(1, d.Transport.QueueErrors.Value);
        q.Notify();
        Assert.Equal(1, d.MsiCount(0));
        // Reset recovers.
        d.Start();
        Assert.Equal(0, d.Status & VirtioPci.StatusNeedsReset);
    }

    [Fact]
    public void Avail_index_jump_beyond_queue_size_needs_reset()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start(queueSize: 8);
        var q = d.Queues[0];
        q.SetAvailIndex(9);
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
    }

    [Fact]
    public void Readable_after_writable_and_zero_length_are_violations()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        var q = d.Queues[0];
        ulong buf = d.Allocate(64);
        q.Post((buf, 16, true), (buf + 16, 16, false));
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);

        d.Start();
        q = d.Queues[0];
        q.Post((buf, 0, true));
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
    }

    [Fact]
    public void Indirect_descriptors_work_and_bad_indirect_tables_are_violations()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        var q = d.Queues[0];
        ulong a = d.Allocate(32), b = d.Allocate(32);
        ushort head = q.PostIndirect((a, 32, true), (b, 32, true));
        q.Notify();
        Assert.Equal((head, 64u), q.TakeUsed());
        Assert.Contains(d.ReadRam(b, 32), x => x != 0);

        // Length not a multiple of 16.
        q.WriteDescriptor(q.Desc, 5, a, 24, Virtqueue.DescFlagIndirect, 0);
        q.PublishHead(5);
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);

        // Nested indirect.
        d.Start();
        q = d.Queues[0];
        ulong table = d.Allocate(16);
        q.WriteDescriptor(table, 0, table, 16, Virtqueue.DescFlagIndirect, 0);
        q.WriteDescriptor(q.Desc, 0, table, 16, Virtqueue.DescFlagIndirect, 0);
        q.PublishHead(0);
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);

        // Indirect without the feature negotiated.
        ulong noIndirect = d.ReadDeviceFeatures() & ~(1UL << VirtioPci.FeatureRingIndirectDesc);
        d.Start(noIndirect);
        q = d.Queues[0];
        q.PostIndirect((a, 32, true));
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
    }

    [Fact]
    public void Event_idx_suppresses_interrupts_until_used_event_and_publishes_avail_event()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        var q = d.Queues[0];
        ulong buf = d.Allocate(16);
        q.SetUsedEvent(1); // interrupt only when used.idx passes 1 → 2
        q.Post((buf, 16, true));
        q.Notify();
        Assert.Equal(1, q.UsedIndex);
        Assert.Equal(0, d.MsiCount(1));
        Assert.Equal(1, q.AvailEvent); // device asks for a notify at the next buffer
        q.Post((buf, 16, true));
        q.Notify();
        Assert.Equal(2, q.UsedIndex);
        Assert.Equal(1, d.MsiCount(1));
    }

    [Fact]
    public void Without_event_idx_no_interrupt_flag_suppresses()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start(d.ReadDeviceFeatures() & ~(1UL << VirtioPci.FeatureRingEventIdx));
        var q = d.Queues[0];
        ulong buf = d.Allocate(16);
        q.SetAvailFlags(Virtqueue.AvailFlagNoInterrupt);
        q.Post((buf, 16, true));
        q.Notify();
        Assert.Equal(0, d.MsiCount(1));
        q.SetAvailFlags(0);
        q.Post((buf, 16, true));
        q.Notify();
        Assert.Equal(1, d.MsiCount(1));
    }

    [Fact]
    public void Intx_fallback_sets_isr_and_reading_isr_clears_it()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start(msix: false);
        var q = d.Queues[0];
        ulong buf = d.Allocate(16);
        q.Post((buf, 16, true));
        q.Notify();
        Assert.Equal(VirtioPci.IsrQueue, d.ReadIsr());
        Assert.Equal(0, d.ReadIsr());
        Assert.Empty(d.Rig.Msi.Messages);
    }

    [Fact]
    public void No_vector_means_no_interrupt()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        d.CommonWrite(VirtioPci.QueueSelect, 2, 0);
        d.CommonWrite(VirtioPci.QueueMsixVector, 2, VirtioPci.NoVector);
        var q = d.Queues[0];
        q.Post((d.Allocate(16), 16, true));
        q.Notify();
        Assert.Equal(1, q.UsedIndex);
        Assert.Empty(d.Rig.Msi.Messages);
    }

    [Fact]
    public void Dma_aimed_at_the_device_bar_fails_without_reentering()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        var q = d.Queues[0];
        // A writable buffer over the device's own common configuration: IDmaSpace reaches RAM only.
        q.Post((d.BarBase, 16, true));
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
        Assert.Equal(0, d.Transport.ReentrantAccesses.Value);
    }

    [Fact]
    public void Bus_master_off_blocks_queue_processing()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        d.CfgWrite(PciConfig.Command, 2, d.Cfg(PciConfig.Command, 2) & ~(uint)PciCommand.BusMaster);
        var q = d.Queues[0];
        ulong buf = d.Allocate(16);
        q.Post((buf, 16, true));
        q.Notify();
        Assert.Equal(0, q.UsedIndex);
        Assert.All(d.ReadRam(buf, 16), x => Assert.Equal(0, x));
    }

    [Fact]
    public void Pci_cfg_capability_window_reaches_common_configuration()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        int cap = d.Caps[VirtioPci.CapPciCfg].CapOffset;
        d.CfgWrite(cap + 4, 1, VirtioPci.BarIndex);
        d.CfgWrite(cap + 8, 4, VirtioPci.NumQueues);
        d.CfgWrite(cap + 12, 4, 2);
        Assert.Equal(1u, d.Cfg(cap + 16, 4));
        d.CfgWrite(cap + 8, 4, VirtioPci.DeviceStatus);
        d.CfgWrite(cap + 12, 4, 1);
        d.CfgWrite(cap + 16, 4, VirtioPci.StatusAcknowledge);
        Assert.Equal(VirtioPci.StatusAcknowledge, d.Status);
    }

    [Fact]
    public void Buffers_are_not_consumed_before_driver_ok_and_are_taken_at_driver_ok()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start(driverOk: false);
        var q = d.Queues[0];
        ulong buf = d.Allocate(16);
        q.Post((buf, 16, true));
        q.Notify();
        Assert.Equal(0, q.UsedIndex); // 3.1.1: no buffer consumed before DRIVER_OK
        d.AddStatus(VirtioPci.StatusDriverOk);
        Assert.Equal(1, q.UsedIndex);
        Assert.Equal(1, d.MsiCount(1));
    }

    [Fact]
    public void Reset_waits_for_a_request_in_flight_on_another_thread()
    {
        var entered = new ManualResetEventSlim();
        var release = new ManualResetEventSlim();
        var console = new VirtioConsole(_ =>
        {
            entered.Set();
            release.Wait(5000);
        });
        using var d = new VirtioTestDriver(console);
        d.Start();
        var tx = d.Queues[VirtioConsole.TransmitQueue];
        tx.Post((d.AllocateData("x"u8), 1, false));
        var sender = new Thread(tx.Notify);
        sender.Start();
        Assert.True(entered.Wait(5000));
        var reset = new Thread(() => d.CommonWrite(VirtioPci.DeviceStatus, 1, 0));
        reset.Start();
        Assert.False(reset.Join(100)); // blocked behind the request in flight
        release.Set();
        Assert.True(reset.Join(5000));
        Assert.True(sender.Join(5000));
        Assert.Equal(1, tx.UsedIndex); // the request completed before the reset took effect
        Assert.Equal(0, d.Status);
    }

    [Theory]
    [InlineData("next out of range")]
    [InlineData("head out of range")]
    [InlineData("indirect with next")]
    [InlineData("length overflow")]
    [InlineData("indirect table too big")]
    public void Malformed_chains_need_reset_and_complete_nothing(string kind)
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start(queueSize: 16);
        var q = d.Queues[0];
        ulong buf = d.Allocate(64);
        ushort head = 0;
        switch (kind)
        {
            case "next out of range":
                q.WriteDescriptor(q.Desc, 0, buf, 16, Virtqueue.DescFlagWrite | Virtqueue.DescFlagNext, 16);
                break;
            case "head out of range":
                head = 16;
                break;
            case "indirect with next":
                q.WriteDescriptor(q.Desc, 0, buf, 16, Virtqueue.DescFlagIndirect | Virtqueue.DescFlagNext, 1);
                break;
            case "length overflow":
                q.WriteDescriptor(q.Desc, 0, buf, 0xFFFF_FFFF, Virtqueue.DescFlagWrite | Virtqueue.DescFlagNext, 1);
                q.WriteDescriptor(q.Desc, 1, buf, 0xFFFF_FFFF, Virtqueue.DescFlagWrite, 0);
                break;
            default:
                // 300 entries: more than any chain may hold (the rng queue maximum is 64).
                q.WriteDescriptor(q.Desc, 0, buf, 16 * 300, Virtqueue.DescFlagIndirect, 0);
                break;
        }
        q.PublishHead(head);
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
        Assert.Equal(0, q.UsedIndex);
        Assert.All(d.ReadRam(buf, 64), b => Assert.Equal(0, b));
    }

    [Fact]
    public void Needs_reset_without_msix_sets_the_isr_config_bit()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start(msix: false);
        var q = d.Queues[0];
        q.PublishHead(200); // head beyond the queue
        q.Notify();
        Assert.NotEqual(0, d.Status & VirtioPci.StatusNeedsReset);
        Assert.Equal(VirtioPci.IsrConfig, d.ReadIsr() & VirtioPci.IsrConfig);
        Assert.Equal(0, d.ReadIsr());
    }
}
