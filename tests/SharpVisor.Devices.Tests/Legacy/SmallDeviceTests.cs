using SharpVisor.Devices.Legacy;

namespace SharpVisor.Devices.Tests.Legacy;

public class DebugExitTests
{
    [Theory]
    [InlineData(0u, 1)]
    [InlineData(0x10u, 0x21)]
    [InlineData(0x31u, 0x63)]
    public void WriteExitsWithValueShiftedLeftOrOne(uint value, int status)
    {
        int? exited = null;
        var dev = new DebugExit(s => exited = s);
        dev.PortWrite(0, 1, value);
        Assert.Equal(status, exited);
    }

    [Fact]
    public void ByteWriteUsesOnlyTheLowByte()
    {
        int? exited = null;
        var dev = new DebugExit(s => exited = s);
        dev.PortWrite(0, 1, 0x1FF);
        Assert.Equal((0xFF << 1) | 1, exited);
    }

    [Fact]
    public void ReadsDoNotExit()
    {
        int? exited = null;
        var dev = new DebugExit(s => exited = s);
        Assert.Equal(0xFFu, dev.PortRead(0, 1));
        Assert.Null(exited);
        Assert.Equal(1, dev.Reads.Value);
    }
}

public class ResetControlTests
{
    [Fact]
    public void LinuxRebootPciSequenceResetsOnce()
    {
        // arch/x86/kernel/reboot.c BOOT_CF9_FORCE: cf9 = inb & ~6; outb(cf9|2); outb(cf9|6).
        int resets = 0;
        var dev = new ResetControl(() => resets++);
        byte cf9 = (byte)(dev.PortRead(0, 1) & ~6u);
        dev.PortWrite(0, 1, cf9 | 2u);
        Assert.Equal(0, resets);
        Assert.Equal(2u, dev.PortRead(0, 1)); // SYS_RST reads back
        dev.PortWrite(0, 1, cf9 | 6u);
        Assert.Equal(1, resets);
        Assert.Equal(0u, dev.PortRead(0, 1) & 4); // RST_CPU is self-clearing
    }

    [Fact]
    public void AcpiResetValueResets()
    {
        int resets = 0;
        var dev = new ResetControl(() => resets++);
        dev.PortWrite(0, 1, 0x06);
        Assert.Equal(1, resets);
    }

    [Fact]
    public void WritesWithoutRstCpuDoNotReset()
    {
        int resets = 0;
        var dev = new ResetControl(() => resets++);
        dev.PortWrite(0, 1, 0x0A);
        Assert.Equal(0, resets);
    }
}
