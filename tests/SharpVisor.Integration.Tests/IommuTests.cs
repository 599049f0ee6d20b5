using System.Security.Cryptography;
using System.Text;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// Debian's own intel-iommu driver on SharpVisor's VT-d unit: it enables queued invalidation and
/// x2APIC interrupt remapping, groups the devices, and a virtio disk keeps working with every DMA
/// translated — the data the guest writes is in the image file, byte for byte.
/// </summary>
[Collection(VmCollection.Name)]
public class IommuTests
{
    [Fact]
    public void VirtioDiskDataSurvivesTranslationByTheGuestsOwnIommuDriver()
    {
        var image = GuestImage.Default;
        string disk = Path.Combine(Path.GetTempPath(), $"sv-disk-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(disk, new byte[16 << 20]);
        string initrd = image.WithTestScript("""
            #!/bin/sh
            seq 1 20000 > /tmp/pattern
            dd if=/tmp/pattern of=/dev/vda bs=4096 conv=fsync 2>/dev/null
            echo "readback=$(dd if=/dev/vda bs=$(wc -c < /tmp/pattern) count=1 2>/dev/null | md5sum)"
            echo "groups=$(ls /sys/kernel/iommu_groups | wc -l)"
            dmesg | grep -E 'DMAR|iommu|DMAR-IR'
            poweroff -f
            """);
        try
        {
            var (exit, console) = BusyboxTests.Boot(image.Kernel, initrd, "console=ttyS0 quiet intel_iommu=on", timeoutSeconds: 300,
                customize: c => c with { Iommu = true, Disks = [new DiskSpec(disk)] });
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{console}");
            Assert.Contains("DMAR: dmar0: Using Queued invalidation", console);
            Assert.Contains("DMAR-IR: Enabled IRQ remapping in x2apic mode", console);
            Assert.DoesNotContain("DMAR: [DMA", console); // no translation fault was reported
            Assert.Matches(@"groups=[1-9]", console);

            byte[] pattern = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Range(1, 20000).Select(i => $"{i}\n")));
            string digest = Convert.ToHexString(MD5.HashData(pattern)).ToLowerInvariant();
            Assert.Contains($"readback={digest}", console);
            byte[] onDisk = File.ReadAllBytes(disk);
            Assert.Equal(pattern, onDisk[..pattern.Length]);
        }
        finally
        {
            File.Delete(initrd);
            File.Delete(disk);
        }
    }
}
