using SharpVisor.Core;
using SharpVisor.Devices.Storage;

namespace SharpVisor.Machine.Tests;

public sealed class DiskSpecTests
{
    [Fact]
    public void Image_locking_is_on_unless_locking_off_is_given()
    {
        Assert.True(DiskSpec.Parse("a.img").Locking);
        Assert.True(DiskSpec.Parse("a.img,locking=on").Locking);
        Assert.Equal(new DiskSpec("a.qcow2", ReadOnly: true, DiskFormat.Qcow2, Locking: false), DiskSpec.Parse("a.qcow2,format=qcow2,locking=off,readonly"));
        var e = Assert.Throws<UserErrorException>(() => DiskSpec.Parse("a.img,locking=maybe"));
        Assert.Contains("locking=on or locking=off", e.Message);
    }
}
