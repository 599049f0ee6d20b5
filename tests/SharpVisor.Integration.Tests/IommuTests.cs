using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// Debian's own intel-iommu driver on SharpVisor's VT-d unit, in each mode a user can pick on the
/// kernel command line: it enables queued invalidation and x2APIC interrupt remapping, groups the
/// devices, and the virtio disk keeps working with every DMA translated — mkfs.ext4, mount, write,
/// read back, e2fsck in the guest, and the file is in the image byte for byte (the guest reports its
/// random data's digest; the host reads the file out of the image with debugfs). One mode runs on
/// a qcow2 image made by qemu-img, which `qemu-img check` must find clean afterwards. A device the guest
/// never mapped anything for (edu, with no driver) has its DMA blocked and the fault reported to
/// the driver, which prints it; in pass-through mode the same DMA reaches RAM. Linux enables ATS on
/// both devices, so their DMA goes through translation requests and their device-IOTLBs.
/// </summary>
[Collection(VmCollection.Name)]
public class IommuTests
{
    public enum Mode { ScalableLazy, ScalableStrict, Legacy, PassThrough }

    const string GuestScript = """
        #!/bin/sh
        dmesg | grep -E 'Default domain type|invalidation policy'
        mkfs.ext4 -q -F /dev/vda && echo "mkfs=ok"
        mkdir -p /mnt
        head -c 2097152 /dev/urandom > /tmp/pattern
        echo "written=$(md5sum < /tmp/pattern)"
        mount -t ext4 /dev/vda /mnt && cp /tmp/pattern /mnt/pattern && umount /mnt && echo "write=ok"
        # A fresh mount: the file's pages were dropped with the inode, so this reads the device.
        mount -t ext4 -o ro /dev/vda /mnt && echo "readback=$(md5sum < /mnt/pattern)" && umount /mnt
        e2fsck -f -n /dev/vda >/tmp/fsck 2>&1; echo "fsck=$?"; cat /tmp/fsck
        echo "groups=$(ls /sys/kernel/iommu_groups | wc -l)"
        # edu (00:03.0, no driver): memory decoding and bus mastering on, then an 8-byte DMA from
        # bus address 0x1000 into its buffer (QEMU docs/specs/edu.rst registers 0x80-0x98).
        edu=/sys/bus/pci/devices/0000:00:03.0
        echo 1 > $edu/enable
        printf '\006\000' | dd of=$edu/config bs=1 seek=4 count=2 conv=notrunc 2>/dev/null
        bar=$(head -n1 $edu/resource | cut -d' ' -f1)
        devmem $((bar + 0x80)) 64 0x1000
        devmem $((bar + 0x88)) 64 0x40000
        devmem $((bar + 0x90)) 64 8
        devmem $((bar + 0x98)) 64 1
        echo "edu_command=$(devmem $((bar + 0x98)) 64)"
        dmesg | grep -E 'DMAR|DMAR-IR'
        poweroff -f
        """;

    [Theory]
    [InlineData(Mode.ScalableLazy)]
    [InlineData(Mode.ScalableStrict)]
    [InlineData(Mode.Legacy)]
    [InlineData(Mode.PassThrough)]
    public void GuestDriverKeepsAnExt4DiskWorkingAndReportsBlockedDma(Mode mode)
    {
        string options = mode switch
        {
            Mode.ScalableLazy => "intel_iommu=on",
            Mode.ScalableStrict => "intel_iommu=on iommu.strict=1",
            Mode.Legacy => "intel_iommu=on,sm_off",
            Mode.PassThrough => "intel_iommu=on iommu=pt",
            _ => throw new ArgumentOutOfRangeException(nameof(mode)),
        };
        var image = GuestImage.Default;
        // Strict mode runs on a qcow2 image made by qemu-img (the format users have); the others on raw.
        bool qcow2 = mode == Mode.ScalableStrict;
        string disk = Path.Combine(Path.GetTempPath(), $"sv-disk-{Guid.NewGuid():N}.{(qcow2 ? "qcow2" : "img")}");
        string raw = qcow2 ? Path.ChangeExtension(disk, "raw") : disk;
        if (qcow2)
        {
            HostTool("qemu-img", $"create -q -f qcow2 {disk} 64M");
        }
        else
        {
            using var f = File.Create(disk);
            f.SetLength(64 << 20);
        }
        string initrd = image.WithTestScript(GuestScript);
        var counters = new Dictionary<string, long>();
        try
        {
            var (exit, console) = BusyboxTests.Boot(image.Kernel, initrd, $"console=ttyS0 quiet {options}", timeoutSeconds: 400,
                customize: c => c with { Iommu = true, Disks = [new DiskSpec(disk)] },
                inspect: vm =>
                {
                    foreach (var (name, counter) in vm.Counters.Entries)
                    {
                        counters[name] = counter.Value;
                    }
                });
            Assert.True(exit.Kind == VmExitKind.PowerOff, $"the VM did not power off: {exit.Message}\n{console}");
            Assert.Contains("DMAR: dmar0: Using Queued invalidation", console);
            Assert.Contains("DMAR-IR: Enabled IRQ remapping in x2apic mode", console);
            Assert.Matches(@"groups=[1-9]", console);

            // The mode the guest asked for is the one the unit ran in.
            long Counter(string suffix) => counters.Where(e => e.Key.EndsWith(suffix, StringComparison.Ordinal)).Sum(e => e.Value);
            bool scalable = mode != Mode.Legacy;
            Assert.True(scalable == Counter(".pasid_cache.misses") > 0, $"scalable mode expected: {scalable}");
            if (mode == Mode.PassThrough)
            {
                Assert.Contains("Default domain type: Passthrough", console);
                Assert.True(Counter(".dma.pass_through") + Counter(".ats.translated_requests") > 0, "the disk's DMA should pass through");
                Assert.Equal(0, Counter(".page_walks"));
            }
            else
            {
                Assert.Contains($"DMA domain TLB invalidation policy: {(mode == Mode.ScalableStrict ? "strict" : "lazy")} mode", console);
                Assert.True(Counter(".page_walks") > 0, "the disk's DMA should be translated");
                Assert.Equal(0, Counter(".dma.pass_through"));
            }

            // Linux enabled ATS on the devices (they expose the capability when the unit offers
            // device-TLBs): their DMA went through translation requests and device-IOTLBs.
            Assert.True(Counter(".ats.translation_requests") > 0 && Counter(".ats.translated_requests") > 0, "the devices should use ATS");

            // The ext4 round trip, checked in the guest and on the host.
            Assert.Contains("mkfs=ok", console);
            Assert.Contains("write=ok", console);
            string written = Regex.Match(console, "written=([0-9a-f]{32})").Groups[1].Value;
            Assert.True(written.Length == 32, "the guest did not report its data's digest");
            Assert.Contains($"readback={written}", console);
            Assert.Contains("fsck=0", console);
            if (qcow2)
            {
                // qemu-img finds the image consistent (no errors, no leaks), then reads it out for debugfs.
                HostTool("qemu-img", $"check -q {disk}");
                HostTool("qemu-img", $"convert -O raw {disk} {raw}");
            }
            byte[] onDisk = HostTool("debugfs", $"-R \"cat /pattern\" {raw}").Stdout;
            Assert.Equal(2 << 20, onDisk.Length);
            Assert.Equal(written, Convert.ToHexString(MD5.HashData(onDisk)).ToLowerInvariant());
            Assert.Equal(0, HostTool("e2fsck", $"-f -n {raw}").ExitCode);

            // edu's DMA: blocked and reported (DMA command bit 3 = SharpVisor's error bit), or, in
            // pass-through mode, done.
            if (mode == Mode.PassThrough)
            {
                Assert.Contains("edu_command=0x0000000000000000", console);
                Assert.DoesNotContain("DMAR: [DMA", console);
            }
            else
            {
                Assert.Contains("edu_command=0x0000000000000008", console);
                Assert.Matches(@"DMAR: \[DMA Read NO_PASID\] Request device \[00:03\.0\] fault addr 0x1000 \[fault reason 0x[0-9a-f]{2}\]", console);
                Assert.Equal(1, Counter(".faults.recorded"));
            }
        }
        finally
        {
            File.Delete(initrd);
            File.Delete(disk);
            File.Delete(raw);
        }
    }

    /// <summary>Runs an e2fsprogs or qemu-utils tool on the host (test.sh installs both); only e2fsck may fail.</summary>
    static (int ExitCode, byte[] Stdout) HostTool(string tool, string arguments)
    {
        var psi = new ProcessStartInfo(tool, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["PATH"] = "/usr/sbin:/sbin:" + Environment.GetEnvironmentVariable("PATH");
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {tool}");
        var stdout = new MemoryStream();
        var copy = p.StandardOutput.BaseStream.CopyToAsync(stdout);
        string stderr = p.StandardError.ReadToEnd();
        copy.Wait();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0 || tool == "e2fsck", $"{tool} {arguments} failed: {stderr}");
        return (p.ExitCode, stdout.ToArray());
    }
}
