using SharpVisor.Cli;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>`reboot` in the guest restarts the machine; `poweroff` then ends the run with status 0.</summary>
[Collection(VmCollection.Name)]
public class RebootTests
{
    [Fact]
    public void GuestRebootBootsAgainAndPoweroffExitsZero()
    {
        var image = GuestImage.Default;
        string disk = Path.Combine(Path.GetTempPath(), $"sv-boots-{Guid.NewGuid():N}.img");
        File.WriteAllBytes(disk, new byte[1 << 20]);
        // The disk's first byte counts boots: the first boot reboots, the second powers off.
        string initrd = image.WithTestScript("""
            #!/bin/sh
            if [ "$(dd if=/dev/vda bs=1 count=1 2>/dev/null)" = "1" ]; then
                printf 2 | dd of=/dev/vda conv=fsync 2>/dev/null
                poweroff -f
            fi
            printf 1 | dd of=/dev/vda conv=fsync 2>/dev/null
            reboot -f
            """);
        try
        {
            var config = new MachineConfig
            {
                Kernel = image.Kernel,
                Initrd = initrd,
                CommandLine = "console=ttyS0 quiet",
                Disks = [new DiskSpec(disk)],
                TimeoutSeconds = 300,
                Tier = TestHelpers.Tier,
            };
            int status = RunCommand.Execute(config);
            Assert.Equal(0, status);
            Assert.Equal((byte)'2', File.ReadAllBytes(disk)[0]);
        }
        finally
        {
            File.Delete(initrd);
            File.Delete(disk);
        }
    }
}
