using System.Text;
using SharpVisor.Devices.Virtio;

namespace SharpVisor.Devices.Tests.Virtio;

public class VirtioEntropyConsoleTests
{
    [Fact]
    public void Rng_fills_the_writable_buffer_and_reports_its_length()
    {
        using var d = new VirtioTestDriver(new VirtioEntropy());
        d.Start();
        var q = d.Queues[0];
        ulong buf = d.Allocate(256);
        ushort head = q.Post((buf, 256, true));
        q.Notify();
        Assert.Equal((head, 256u), q.TakeUsed());
        Assert.True(d.ReadRam(buf, 256).Count(b => b == 0) < 32);
        Assert.Equal(1, d.MsiCount(1));
    }

    [Fact]
    public void Console_transmit_reaches_the_output_sink()
    {
        var output = new MemoryStream();
        using var d = new VirtioTestDriver(new VirtioConsole(data => output.Write(data)));
        d.Start();
        var tx = d.Queues[VirtioConsole.TransmitQueue];
        ulong a = d.AllocateData("hello, "u8), b = d.AllocateData("world\n"u8);
        ushort head = tx.Post((a, 7, false), (b, 6, false));
        tx.Notify();
        Assert.Equal("hello, world\n", Encoding.ASCII.GetString(output.ToArray()));
        Assert.Equal((head, 0u), tx.TakeUsed());
    }

    [Fact]
    public void Console_input_waits_for_receive_buffers_then_is_delivered_in_order()
    {
        using var d = new VirtioTestDriver(new VirtioConsole());
        var console = (VirtioConsole)d.Device;
        console.Input("early"u8); // before the driver is up: kept
        d.Start();
        var rx = d.Queues[VirtioConsole.ReceiveQueue];
        ulong b1 = d.Allocate(3), b2 = d.Allocate(16);
        ushort h1 = rx.Post((b1, 3, true));
        rx.Notify();
        Assert.Equal((h1, 3u), rx.TakeUsed());
        Assert.Equal("ear"u8.ToArray(), d.ReadRam(b1, 3));
        ushort h2 = rx.Post((b2, 16, true));
        rx.Notify();
        Assert.Equal((h2, 2u), rx.TakeUsed());
        Assert.Equal("ly"u8.ToArray(), d.ReadRam(b2, 2));
        // A posted buffer waits for input; input then completes it with an interrupt.
        ulong b3 = d.Allocate(16);
        ushort h3 = rx.Post((b3, 16, true));
        rx.Notify();
        Assert.Null(rx.TakeUsed());
        int before = d.MsiCount(1);
        rx.SetUsedEvent(2); // as virtqueue_enable_cb does: interrupt at the next completion (EVENT_IDX)
        console.Input("x"u8);
        Assert.Equal((h3, 1u), rx.TakeUsed());
        Assert.Equal(before + 1, d.MsiCount(1));
    }

    [Fact]
    public void Console_emergency_write_prints_one_byte()
    {
        var output = new MemoryStream();
        using var d = new VirtioTestDriver(new VirtioConsole(data => output.Write(data)));
        d.Start();
        d.DeviceCfgWrite(8, 4, 'Z');
        Assert.Equal("Z", Encoding.ASCII.GetString(output.ToArray()));
    }
}
