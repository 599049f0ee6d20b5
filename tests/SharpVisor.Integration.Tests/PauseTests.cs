using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using SharpVisor.Core;
using SharpVisor.Devices.Virtio;
using SharpVisor.Machine;

namespace SharpVisor.Integration.Tests;

/// <summary>
/// Pause and Resume (issue 9): a paused machine is still — no instruction retires, guest time does
/// not move — until it is resumed, and in deterministic mode pausing does not change what the guest
/// computes. Snapshots and migration read a VM's state only while it is paused.
/// </summary>
[Collection(VmCollection.Name)]
public class PauseTests
{
    const ulong CounterAddress = 0x20_0000;

    /// <summary>32-bit code that counts forever in the dword at 2 MiB.</summary>
    static readonly byte[] CountForever =
    [
        0xFF, 0x05, 0x00, 0x00, 0x20, 0x00, // inc dword [0x200000]
        0xEB, 0xF8,                         // jmp back to the inc
    ];

    [Theory]
    [InlineData(ClockMode.Host)]
    [InlineData(ClockMode.Deterministic)]
    public void APausedMachineIsStillUntilResumed(ClockMode clock)
    {
        using var kernel = new MultibootKernel(CountForever);
        using var vm = new VirtualMachine(new MachineConfig { Kernel = kernel.Path, Cpus = 2, Clock = clock, TimeoutSeconds = 60 }, _ => { });
        VmExit? exit = null;
        var runner = new Thread(() => exit = vm.Run());
        runner.Start();
        try
        {
            WaitUntil(() => vm.Ram.ReadU32(CounterAddress) > 1000, "the guest never started counting");
            for (int round = 0; round < 3; round++)
            {
                vm.Pause();
                Assert.True(vm.IsPaused);
                uint count = vm.Ram.ReadU32(CounterAddress);
                long now = vm.Clock.NowNs;
                long retired = vm.Cpus[0].InstructionsRetired;
                Thread.Sleep(100);
                Assert.Equal(count, vm.Ram.ReadU32(CounterAddress));
                Assert.Equal(now, vm.Clock.NowNs);
                Assert.Equal(retired, vm.Cpus[0].InstructionsRetired);
                vm.Resume();
                Assert.False(vm.IsPaused);
                WaitUntil(() => vm.Ram.ReadU32(CounterAddress) > count + 1000, $"round {round}: the guest did not go on after Resume");
                Assert.True(vm.Clock.NowNs >= now, "guest time went backwards over a pause");
            }
        }
        finally
        {
            vm.RequestExit(new VmExit(VmExitKind.Stopped, "test over"));
            runner.Join();
        }
        Assert.Equal(VmExitKind.Stopped, exit!.Value.Kind);
    }

    [Fact]
    public void ARunThatIsPausedEndsWhenAnExitIsRequested()
    {
        using var kernel = new MultibootKernel(CountForever);
        using var vm = new VirtualMachine(new MachineConfig { Kernel = kernel.Path, TimeoutSeconds = 60 }, _ => { });
        VmExit? exit = null;
        var runner = new Thread(() => exit = vm.Run());
        runner.Start();
        WaitUntil(() => vm.Ram.ReadU32(CounterAddress) > 0, "the guest never started counting");
        vm.Pause();
        vm.RequestExit(new VmExit(VmExitKind.Stopped, "stopped while paused"));
        Assert.True(runner.Join(TimeSpan.FromSeconds(30)), "a paused run did not end on RequestExit");
        Assert.Equal("stopped while paused", exit!.Value.Message);
    }

    /// <summary>
    /// Deterministic mode: a run paused and resumed many times at arbitrary moments computes exactly
    /// what an uninterrupted run does by the same guest time (the run thread parks between rounds).
    /// </summary>
    [Fact]
    public void PausingADeterministicRunDoesNotChangeWhatTheGuestComputes()
    {
        using var kernel = new MultibootKernel(CountForever);
        var config = new MachineConfig { Kernel = kernel.Path, Cpus = 2, Clock = ClockMode.Deterministic, TimeoutSeconds = 0.5 };
        uint uninterrupted;
        using (var vm = new VirtualMachine(config, _ => { }))
        {
            Assert.Equal(VmExitKind.Timeout, vm.Run().Kind);
            uninterrupted = vm.Ram.ReadU32(CounterAddress);
        }
        using (var vm = new VirtualMachine(config, _ => { }))
        {
            VmExit? exit = null;
            var runner = new Thread(() => exit = vm.Run());
            runner.Start();
            int pauses = 0;
            while (!runner.Join(TimeSpan.FromMilliseconds(3)))
            {
                vm.Pause();
                pauses++;
                vm.Resume();
            }
            Assert.Equal(VmExitKind.Timeout, exit!.Value.Kind);
            Assert.True(pauses > 3, $"only {pauses} pauses happened; the test proves nothing");
            Assert.Equal(uninterrupted, vm.Ram.ReadU32(CounterAddress));
        }
    }

    /// <summary>
    /// Device threads are quiesced too: frames a network peer sends and bytes typed on the console
    /// while the machine is paused change nothing in it (the NIC has not even seen the frames: its
    /// backend holds them in the socket) until Resume, and then all of them arrive.
    /// </summary>
    [Fact]
    public void NetworkAndConsoleInputWaitWhileTheMachineIsPaused()
    {
        const int Frames = 5;
        using var kernel = new MultibootKernel(CountForever);
        var config = new MachineConfig
        {
            Kernel = kernel.Path,
            MemoryMiB = 32,
            TimeoutSeconds = 60,
            Net = NetSpec.StreamListen(new IPEndPoint(IPAddress.Loopback, TestHelpers.FreePort())),
        };
        using var vm = new VirtualMachine(config, _ => { }, new Log(TextWriter.Null));
        var nic = vm.Pci.Bus.Functions.OfType<VirtioPciTransport>().Select(t => t.Device).OfType<VirtioNet>().Single();
        VmExit? exit = null;
        var runner = new Thread(() => exit = vm.Run());
        runner.Start();
        try
        {
            using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            peer.Connect(config.Net!.EndPoint!);
            WaitUntil(() => nic.LinkUp && vm.Ram.ReadU32(CounterAddress) > 0, "the link did not come up or the guest did not start");
            vm.Pause();
            var frame = new byte[60];
            var wire = new byte[4 + frame.Length];
            BinaryPrimitives.WriteInt32BigEndian(wire, frame.Length);
            for (int i = 0; i < Frames; i++)
            {
                peer.Send(wire);
            }
            vm.SendConsoleInput((byte)'a');
            vm.SendConsoleInput((byte)'b');
            var before = vm.SaveState();
            Thread.Sleep(300);
            // The guest has no virtio driver, so a frame the NIC took would be counted as dropped.
            Assert.Equal(0, nic.RxDropped.Value + nic.RxFrames.Value);
            Assert.Equal(0, vm.Com1.ReceivedBytes.Value);
            var after = vm.SaveState();
            Assert.Equal(before.Ram, after.Ram);
            Assert.Equal(JsonSerializer.Serialize(before with { Ram = [] }), JsonSerializer.Serialize(after with { Ram = [] }));
            vm.Resume();
            WaitUntil(() => nic.RxDropped.Value == Frames, "the frames held while paused did not reach the NIC after Resume");
            WaitUntil(() => vm.Com1.ReceivedBytes.Value == 2, "the console input held while paused did not reach the UART after Resume");
        }
        finally
        {
            vm.RequestExit(new VmExit(VmExitKind.Stopped, "test over"));
            runner.Join();
        }
        Assert.Equal(VmExitKind.Stopped, exit!.Value.Kind);
    }

    static void WaitUntil(Func<bool> condition, string failure)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, failure);
            Thread.Sleep(2);
        }
    }
}
