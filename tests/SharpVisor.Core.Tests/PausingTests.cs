using SharpVisor.Core;

namespace SharpVisor.Core.Tests;

/// <summary>
/// The two ways a device thread is held while its VM is paused (issue 9): a <see cref="DeliveryGate"/>
/// the thread waits at, and <see cref="HeldInput"/> that queues bytes without making the sender wait.
/// </summary>
public class PausingTests
{
    static readonly TimeSpan Long = TimeSpan.FromSeconds(10);

    [Fact]
    public void AThreadWaitsAtAPausedGateAndDeliversAfterResume()
    {
        var gate = new DeliveryGate();
        gate.Pause();
        int delivered = 0;
        var thread = new Thread(() =>
        {
            if (gate.Enter())
            {
                delivered++;
                gate.Exit();
            }
        });
        thread.Start();
        Assert.False(thread.Join(200), "the thread went through a paused gate");
        Assert.Equal(0, delivered);
        gate.Resume();
        Assert.True(thread.Join(Long));
        Assert.Equal(1, delivered);
    }

    [Fact]
    public void PauseReturnsOnlyAfterTheDeliveryInProgressHasFinished()
    {
        var gate = new DeliveryGate();
        using var inside = new ManualResetEventSlim();
        using var finish = new ManualResetEventSlim();
        bool finished = false;
        var deliverer = new Thread(() =>
        {
            Assert.True(gate.Enter());
            inside.Set();
            finish.Wait();
            Volatile.Write(ref finished, true);
            gate.Exit();
        });
        deliverer.Start();
        Assert.True(inside.Wait(Long));
        var pauser = new Thread(gate.Pause);
        pauser.Start();
        Assert.False(pauser.Join(200), "Pause returned while a delivery was in progress");
        finish.Set();
        Assert.True(pauser.Join(Long));
        Assert.True(Volatile.Read(ref finished));
        Assert.True(gate.IsPaused);
        deliverer.Join();
    }

    [Fact]
    public void PausesNestAndAResumeWithoutAPauseIsABug()
    {
        var gate = new DeliveryGate();
        gate.Pause();
        gate.Pause();
        gate.Resume();
        Assert.True(gate.IsPaused);
        gate.Resume();
        Assert.False(gate.IsPaused);
        Assert.Throws<InvalidOperationException>(gate.Resume);
    }

    [Fact]
    public void ClosingTheGateReleasesAWaitingThreadWithoutDelivering()
    {
        var gate = new DeliveryGate();
        gate.Pause();
        bool? entered = null;
        var thread = new Thread(() => entered = gate.Enter());
        thread.Start();
        Assert.False(thread.Join(100));
        gate.Close();
        Assert.True(thread.Join(Long));
        Assert.False(entered);
        Assert.False(gate.Enter());
    }

    [Fact]
    public void HeldInputIsDeliveredAfterResumeInOrderAndBeforeLaterInput()
    {
        var got = new List<byte>();
        var input = new HeldInput(data => got.AddRange(data.ToArray()), 16, "test");
        input.Send([1, 2]);
        Assert.Equal([1, 2], got);
        input.Pause();
        input.Send([3, 4]);
        input.Send([5]);
        Assert.Equal([1, 2], got); // nothing reaches the device while paused
        Assert.Equal(3, input.HeldCount);
        input.Resume();
        input.Send([6]);
        Assert.Equal([1, 2, 3, 4, 5, 6], got);
        Assert.Equal(0, input.HeldCount);
        Assert.Equal(0, input.Dropped.Value);
    }

    [Fact]
    public void HeldInputIsBoundedAndPausesNest()
    {
        var got = new List<byte>();
        var input = new HeldInput(data => got.AddRange(data.ToArray()), 4, "test");
        for (int round = 0; round < 3; round++)
        {
            got.Clear();
            input.Pause();
            input.Pause(); // nested: still held after one Resume
            input.Send([10, 11, 12]);
            input.Send([13, 14, 15]);
            input.Resume();
            Assert.Empty(got);
            input.Resume();
            Assert.Equal([10, 11, 12, 13], got);
        }
        Assert.Equal(6, input.Dropped.Value);
        Assert.Throws<InvalidOperationException>(input.Resume);
    }
}
