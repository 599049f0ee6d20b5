using SharpVisor.Cpu.X86.Tests.Harness;

namespace SharpVisor.Cpu.X86.Tests.Differential;

/// <summary>
/// The oracle for faulting inputs: bytes run natively in a forked child, and the signal Linux sent
/// it tells which exception the host CPU raised (SIGBUS for #SS, SIGSEGV for #GP/#PF, SIGILL for #UD).
/// </summary>
public unsafe class NativeChildRunnerTests : IClassFixture<RunnerFixture>
{
    readonly DifferentialRunner _runner;
    public NativeChildRunnerTests(RunnerFixture f) => _runner = f.Runner;

    [Fact]
    public void ChildRunReportsTheSignalOfTheHostException()
    {
        var t = new DiffCase(_runner, 1);
        var ctx = t.RandomContext();
        Assert.Equal(new DifferentialRunner.ChildEnd(0, 0), _runner.RunNativeInChild([0x90], ctx, t.RandomData()));       // nop
        Assert.Equal(4, _runner.RunNativeInChild([0x0F, 0x0B], ctx, t.RandomData()).Signal);                             // ud2: SIGILL
        ctx.Gpr[0] = 0x1000;
        Assert.Equal(11, _runner.RunNativeInChild([0x48, 0x8B, 0x00], ctx, t.RandomData()).Signal);                      // mov rax, [rax] unmapped: SIGSEGV
        ctx.Gpr[4] = 0x8000_0000_0000_0000;
        Assert.Equal(7, _runner.RunNativeInChild([0x50], ctx, t.RandomData()).Signal);                                   // push rax, non-canonical RSP: SIGBUS
        ctx = t.RandomContext();
        Assert.Equal(0, _runner.RunNativeInChild([0xC6, 0x03, 0x77], ctx, t.RandomData()).Signal);                       // mov byte [rbx], 0x77: the data window is mapped
        ctx.Gpr[3] = DifferentialRunner.LowDataAddress + 0xFFF;
        Assert.Equal(0, _runner.RunNativeInChild([0x67, 0xC6, 0x03, 0x77], ctx, t.RandomData(), lowData: true).Signal);   // mov byte [ebx], 0x77: so is the low one
        Assert.Equal(11, _runner.RunNativeInChild([0x67, 0xC6, 0x43, 0x01, 0x77], ctx, t.RandomData(), lowData: true).Signal); // [ebx+1] wraps to 0: unmapped
    }
}
