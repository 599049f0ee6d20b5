using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// The oracle for faulting inputs: bytes run natively in a forked child, and the signal frame Linux
/// built tells which exception the host CPU raised and its error code.
/// </summary>
public unsafe class NativeChildRunnerTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public NativeChildRunnerTests(RunnerFixture f) => _runner = f.Runner;

    [Fact]
    public void ChildRunsReportTheHostException()
    {
        var t = new DiffCase(_runner, 1);
        var ok = t.RandomContext();
        var unmapped = ok;
        unmapped.Gpr[0] = 0x1000;
        ok.Gpr[0] = ok.Gpr[3]; // the data window
        var badStack = ok;
        badStack.Gpr[4] = 0x8000_0000_0000_0000;
        var low = ok;
        low.Gpr[3] = DifferentialRunner.LowDataAddress + 0xFFF;
        DifferentialRunner.NativeCase[] cases =
        [
            new([0x90], ok),                            // nop
            new([0x0F, 0x0B], ok),                      // ud2: #UD, SIGILL
            new([0x48, 0x8B, 0x00], unmapped),          // mov rax, [rax]: #PF, SIGSEGV
            new([0x50], badStack),                      // push rax with a non-canonical RSP: #SS(0), SIGBUS
            new([0x48, 0x8B, 0x00], badStack),          // mov rax, [rax] runs with any RSP
            new([0xC6, 0x03, 0x77], ok),                // mov byte [rbx], 0x77: the data window is mapped
            new([0xFD], ok),                            // std: DF does not leak into the loop's copies
            new([0xC6, 0x03, 0x77], ok),
        ];
        var ends = _runner.RunNativeInChild(cases, t.RandomData());
        Assert.Equal(new DifferentialRunner.NativeEnd(0, -1, 0, 0), ends[0]);
        Assert.Equal((4, Vector.UD), (ends[1].Signal, ends[1].Vector));
        Assert.Equal((11, Vector.PF), (ends[2].Signal, ends[2].Vector));
        Assert.Equal(4L, ends[2].ErrorCode & 4); // a user-mode access
        Assert.Equal(new DifferentialRunner.NativeEnd(7, Vector.SS, 0, _runner.CodeAddress), ends[3]);
        Assert.Equal(0, ends[4].Signal);
        Assert.Equal(0, ends[5].Signal);
        Assert.Equal(0, ends[6].Signal);
        Assert.Equal(0, ends[7].Signal);

        // The window below 4 GiB is mapped in the child too: [ebx] is, [ebx + 1] wraps to 0.
        Assert.Equal(0, _runner.RunNativeInChild([0x67, 0xC6, 0x03, 0x77], low, t.RandomData(), lowData: true).Signal);
        Assert.Equal(Vector.PF, _runner.RunNativeInChild([0x67, 0xC6, 0x43, 0x01, 0x77], low, t.RandomData(), lowData: true).Vector);
    }
}
