using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;
using static SharpVisor.Devices.Tests.Persistence.StateRoundTrip;

namespace SharpVisor.Devices.Tests.Persistence;

public class LocalApicStateTests
{
    const long TscHz = 2_000_000_000;

    sealed class LoggedSignals(Rig rig, string name) : IVcpuSignals
    {
        public void NotifyInterrupt() => rig.Log($"{name} notify");
        public void RaiseNmi() => rig.Log($"{name} nmi");
        public void RaiseInit() => rig.Log($"{name} init");
        public void RaiseStartup(byte vector) => rig.Log($"{name} sipi {vector:x2}");
    }

    /// <summary>An 8259 that always has IRQ 0 to give.</summary>
    sealed class LoggedPic(Rig rig) : IExtIntController
    {
        public bool HasInterrupt => true;
        public byte Acknowledge()
        {
            rig.Log("8259 acknowledge");
            return 0x20;
        }
    }

    sealed class LoggedEoi(Rig rig) : IApicEoiListener
    {
        public void OnEoi(byte vector) => rig.Log($"eoi {vector:x2}");
    }

    /// <summary>One APIC per rig, as vCPU 0 of a board: its bus, its TSC, an EOI listener.</summary>
    sealed class Board
    {
        public Board(Rig rig, int cpus = 1)
        {
            Tsc = new TimeStampCounter(rig.Clock, TscHz);
            Apics = new LocalApic[cpus];
            for (int i = 0; i < cpus; i++)
            {
                Apics[i] = new LocalApic((uint)i, Bus, new LoggedSignals(rig, $"cpu{i}"), rig.Timers, Tsc, i == 0 ? new LoggedPic(rig) : null)
                {
                    EoiListener = new LoggedEoi(rig),
                };
                Bus.Attach(Apics[i]);
            }
        }

        public ApicBus Bus { get; } = new();
        public TimeStampCounter Tsc { get; }
        public LocalApic[] Apics { get; }
    }

    static readonly Dictionary<LocalApic, Board> Boards = [];

    static LocalApic Build(Rig rig)
    {
        var board = new Board(rig);
        lock (Boards)
        {
            Boards[board.Apics[0]] = board;
        }
        return board.Apics[0];
    }

    static Board BoardOf(LocalApic apic)
    {
        lock (Boards)
        {
            return Boards[apic];
        }
    }

    static void W(LocalApic apic, ulong offset, uint value) => apic.MmioWrite(offset, 4, value);

    /// <summary>
    /// Software-enabled with a new xAPIC ID, an ExtINT message waiting, a TPR, cluster logical addressing, NMI on LINT1 (asserted), the error
    /// LVT set up and an illegal register write recorded, a level interrupt and an edge one
    /// pending, one in service, a self-IPI, and a periodic timer whose next expiry is overdue when
    /// the pause comes.
    /// </summary>
    static void Drive(LocalApic apic, Rig rig)
    {
        W(apic, 0xF0, 0x1FF);
        W(apic, 0x20, 0x0500_0000);
        W(apic, 0x350, 0x1_0700); // LINT0 masked: the 8259 reaches the CPU only through an ExtINT message
        apic.Accept(new ApicInterrupt(5, false, ApicDeliveryMode.ExtInt, 0, false));
        W(apic, 0x80, 0x20);
        W(apic, 0xD0, 0x1200_0000);
        W(apic, 0xE0, 0x0FFF_FFFF);
        W(apic, 0x360, 0x400);
        W(apic, 0x370, 0xFE);
        W(apic, 0x3E0, 0x3);
        W(apic, 0x320, 0x2_00EC);
        W(apic, 0x380, 100_000);
        apic.Accept(new ApicInterrupt(0, false, ApicDeliveryMode.Fixed, 0x52, false));
        rig.Log($"ack {apic.AcknowledgeInterrupt():x2}");
        apic.Accept(new ApicInterrupt(0, false, ApicDeliveryMode.Fixed, 0x41, true));
        apic.Accept(new ApicInterrupt(0, false, ApicDeliveryMode.Fixed, 0x61, false));
        W(apic, 0x400, 1);
        W(apic, 0x310, 0);
        W(apic, 0x300, (1u << 18) | 0x77);
        apic.Lint1.SetLevel(true);
        rig.Advance(2_500_000);
        rig.SkipWithoutTimers(1_000_000);
    }

    static readonly ulong[] Registers =
    [
        0x20, 0x30, 0x80, 0x90, 0xA0, 0xD0, 0xE0, 0xF0,
        0x100, 0x110, 0x120, 0x130, 0x140, 0x150, 0x160, 0x170,
        0x180, 0x190, 0x1A0, 0x1B0, 0x1C0, 0x1D0, 0x1E0, 0x1F0,
        0x200, 0x210, 0x220, 0x230, 0x240, 0x250, 0x260, 0x270,
        0x280, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370, 0x380, 0x390, 0x3E0,
    ];

    static void ReadPage(LocalApic apic, string when, List<string> reads)
    {
        var line = new System.Text.StringBuilder(when);
        apic.TryReadMsr(LocalApic.MsrApicBase, out ulong apicBase);
        apic.TryReadMsr(LocalApic.MsrTscDeadline, out ulong tscDeadline);
        line.Append($" base{apicBase:x} tscdl{tscDeadline:x} pending{(apic.HasPendingInterrupt ? 1 : 0)} cr8 {apic.ReadCr8()}");
        foreach (ulong offset in Registers)
        {
            line.Append($" {apic.MmioRead(offset, 4):x}");
        }
        reads.Add(line.ToString());
    }

    static void After(LocalApic apic, Rig rig, List<string> reads)
    {
        ReadPage(apic, "start", reads);
        W(apic, 0x280, 0);
        for (int i = 0; i < 6; i++)
        {
            if (apic.HasPendingInterrupt)
            {
                reads.Add($"ack {apic.AcknowledgeInterrupt():x2}");
            }
            rig.Advance(700_000);
            ReadPage(apic, $"step{i}", reads);
            W(apic, 0xB0, 0);
            if (i == 2)
            {
                W(apic, 0x80, 0x00);
                apic.Lint1.SetLevel(false);
                apic.Lint1.SetLevel(true);
                W(apic, 0x3E0, 0xB);
            }
        }
        W(apic, 0x320, 0x4_00ED);
        var board = BoardOf(apic);
        apic.TryWriteMsr(LocalApic.MsrTscDeadline, board.Tsc.Read() + 3_000_000);
        rig.Advance(2_000_000);
        ReadPage(apic, "tsc-deadline", reads);
        W(apic, 0xF0, 0xFF);
        ReadPage(apic, "disabled", reads);
    }

    [Fact]
    public void RestoredApicReadsAcceptsAndTimesAsTheOriginal()
        => Check<LocalApic, LocalApic.State>(Build, Drive, After);

    [Fact]
    public void RestoredApicInX2ApicModeWithATscDeadlineArmed()
        => Check<LocalApic, LocalApic.State>(Build, (apic, rig) =>
        {
            Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, 0xFEE0_0000 | (1 << 11) | (1 << 10) | (1 << 8)));
            Assert.True(apic.TryWriteMsr(0x80F, 0x1FF));
            Assert.True(apic.TryWriteMsr(0x832, 0x4_00E0));
            Assert.True(apic.TryWriteMsr(LocalApic.MsrTscDeadline, BoardOf(apic).Tsc.Read() + 5_000_000));
            Assert.True(apic.TryWriteMsr(0x830, (7UL << 32) | 0x55)); // IPI to APIC 7: nobody there
            Assert.True(apic.TryWriteMsr(0x83F, 0x66));               // self IPI
            rig.Advance(1_000_000);
        }, (apic, rig, reads) =>
        {
            for (int i = 0; i < 5; i++)
            {
                var line = new System.Text.StringBuilder($"x2 {i}");
                foreach (uint msr in (ReadOnlySpan<uint>)[0x1B, 0x6E0, 0x802, 0x803, 0x808, 0x80A, 0x80D, 0x80F, 0x810, 0x817, 0x820, 0x827, 0x828, 0x830, 0x832, 0x838, 0x839, 0x83E])
                {
                    line.Append(apic.TryReadMsr(msr, out ulong v) ? $" {v:x}" : " #GP");
                }
                reads.Add(line.ToString());
                if (apic.HasPendingInterrupt)
                {
                    reads.Add($"ack {apic.AcknowledgeInterrupt():x2}");
                    apic.TryWriteMsr(0x80B, 0);
                }
                rig.Advance(1_500_000);
            }
        });

    [Fact]
    public void LowestPriorityRotationContinuesWhereItWas()
    {
        var a = new Rig();
        var original = new Board(a, cpus: 3);
        foreach (var apic in original.Apics)
        {
            W(apic, 0xF0, 0x1FF);
            W(apic, 0xD0, 0x0100_0000);
        }
        void Deliver(Board board, List<string> log, int count)
        {
            for (int i = 0; i < count; i++)
            {
                byte vector = (byte)(0x30 + i);
                board.Bus.Deliver(new ApicInterrupt(0x01, true, ApicDeliveryMode.LowestPriority, vector, false));
                log.Add(string.Join(",", board.Apics.Select(apic => (apic.MmioRead(0x200 + (ulong)(vector >> 5) * 0x10, 4) >> (vector & 31)) & 1)));
            }
        }
        Deliver(original, [], 4);
        var busState = original.Bus.SaveState();
        var apicStates = original.Apics.Select(apic => apic.SaveState()).ToArray();

        var b = new Rig(a.NowNs);
        var restored = new Board(b, cpus: 3);
        for (int i = 0; i < 3; i++)
        {
            restored.Apics[i].RestoreState(ThroughJson(apicStates[i]));
        }
        restored.Bus.RestoreState(ThroughJson(busState));
        var logA = new List<string>();
        var logB = new List<string>();
        Deliver(original, logA, 7);
        Deliver(restored, logB, 7);
        Assert.Equal(logA, logB);
        Refused(restored.Bus, b, busState with { Version = 2 }, "version 2");
    }

    [Fact]
    public void OutOfRangeFieldsAreRefusedAndChangeNothing()
    {
        var rig = new Rig();
        var apic = Build(rig);
        var fresh = apic.SaveState();
        Drive(apic, rig);
        uint[] Words(uint[] source, int index, uint value)
        {
            var words = (uint[])source.Clone();
            words[index] = value;
            return words;
        }
        Refused(apic, rig, fresh with { Version = 0 }, "version 0");
        Refused(apic, rig, fresh with { ApicId = 1 }, "ApicId");
        Refused(apic, rig, fresh with { ApicBase = fresh.ApicBase | 1 }, "ApicBase");
        Refused(apic, rig, fresh with { ApicBase = fresh.ApicBase & ~(1UL << 8) }, "ApicBase");
        Refused(apic, rig, fresh with { ApicBase = (fresh.ApicBase & ~(1UL << 11)) | (1UL << 10) }, "ApicBase");
        Refused(apic, rig, fresh with { XApicId = 256 }, "XApicId");
        Refused(apic, rig, fresh with { Tpr = 0x100 }, "Tpr");
        Refused(apic, rig, fresh with { Svr = 0x400 }, "Svr");
        Refused(apic, rig, fresh with { Ldr = 1 }, "Ldr");
        Refused(apic, rig, fresh with { Dfr = 0 }, "Dfr");
        Refused(apic, rig, fresh with { Esr = 1 }, "Esr");
        Refused(apic, rig, fresh with { EsrPending = 0x100 }, "EsrPending");
        Refused(apic, rig, fresh with { IcrLow = 1u << 12 }, "IcrLow");
        Refused(apic, rig, fresh with { IcrHigh = 1 }, "IcrHigh");
        Refused(apic, rig, fresh with { Irr = new uint[7] }, "Irr");
        Refused(apic, rig, fresh with { Isr = Words(fresh.Isr, 0, 1u << 3) }, "Isr");
        Refused(apic, rig, fresh with { Tmr = null! }, "Tmr");
        Refused(apic, rig, fresh with { Lvt = new uint[5] }, "Lvt");
        Refused(apic, rig, fresh with { Lvt = Words(fresh.Lvt, 0, 1u << 12) }, "Lvt[0]");
        Refused(apic, rig, fresh with { Lvt = Words(fresh.Lvt, 5, 0x700) }, "Lvt[5]");
        Refused(apic, rig, fresh with { DivideConfig = 4 }, "DivideConfig");
        Refused(apic, rig, fresh with { CountStartNs = rig.NowNs + 1 }, "CountStartNs");
        Refused(apic, rig, fresh with { TscDeadline = 5 }, "TscDeadline");
        Refused(apic, rig, fresh with { TimerDeadlineNs = rig.NowNs }, "TimerDeadlineNs");
        Refused(apic, rig, fresh with { InitialCount = 1, TimerDeadlineNs = -1 }, "TimerDeadlineNs");
        Refused(apic, rig, fresh with { InitialCount = 1, TimerDeadlineNs = long.MaxValue - 1 }, "TimerDeadlineNs");
        Refused(apic, rig, fresh with { LintLevel = [true] }, "LintLevel");
    }
}
