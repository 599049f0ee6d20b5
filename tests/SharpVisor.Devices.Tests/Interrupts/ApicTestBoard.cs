using SharpVisor.Core;
using SharpVisor.Devices.Interrupts;

namespace SharpVisor.Devices.Tests.Interrupts;

/// <summary>Records what a local APIC signals to its vCPU.</summary>
sealed class RecordingSignals : IVcpuSignals
{
    public int Notifications;
    public int Nmis;
    public int Inits;
    public readonly List<byte> Startups = [];
    public readonly List<string> Events = [];

    public void NotifyInterrupt() => Interlocked.Increment(ref Notifications);
    public void RaiseNmi() { Nmis++; Events.Add("NMI"); }
    public void RaiseInit() { Inits++; Events.Add("INIT"); }
    public void RaiseStartup(byte vector) { Startups.Add(vector); Events.Add($"SIPI {vector:x2}"); }
}

sealed class FakePic : IExtIntController
{
    public bool Pending;
    public byte Vector = 0x08;
    public int Acks;
    public bool HasInterrupt => Pending;
    public byte Acknowledge() { Acks++; Pending = false; return Vector; }
}

sealed class RecordingMsiSink : IMsiSink
{
    public readonly List<(ulong Address, uint Data, ushort Rid)> Messages = [];
    public void SendMsi(ulong address, uint data, ushort requesterId) => Messages.Add((address, data, requesterId));
}

sealed class RecordingEoiListener : IApicEoiListener
{
    public readonly List<byte> Vectors = [];
    public void OnEoi(byte vector) => Vectors.Add(vector);
}

/// <summary>N local APICs on one bus, a deterministic clock and its timer queue.</summary>
sealed class ApicTestBoard
{
    public const long TscHz = 2_000_000_000;
    public readonly VirtualClock Clock = new(ClockMode.Deterministic);
    public readonly TimerQueue Timers;
    public readonly ApicBus Bus = new();
    public readonly LocalApic[] Apics;
    public readonly RecordingSignals[] Signals;
    public readonly TimeStampCounter[] Tsc;
    public readonly FakePic Pic = new();

    public ApicTestBoard(int cpus)
    {
        Timers = new TimerQueue(Clock);
        Apics = new LocalApic[cpus];
        Signals = new RecordingSignals[cpus];
        Tsc = new TimeStampCounter[cpus];
        for (int i = 0; i < cpus; i++)
        {
            Signals[i] = new RecordingSignals();
            Tsc[i] = new TimeStampCounter(Clock, TscHz);
            Apics[i] = new LocalApic((uint)i, Bus, Signals[i], Timers, Tsc[i], i == 0 ? Pic : null);
            Bus.Attach(Apics[i]);
        }
    }

    /// <summary>Moves virtual time to <paramref name="ns"/> and runs the timers due.</summary>
    public void RunUntil(long ns)
    {
        Clock.SkipTo(ns);
        Timers.RunExpired();
    }

    public static void SoftwareEnable(LocalApic apic, byte spurious = 0xFF)
        => apic.MmioWrite(ApicRegs.Svr, 4, 0x100u | spurious);

    public static void EnableX2Apic(LocalApic apic)
    {
        Assert.True(apic.TryWriteMsr(LocalApic.MsrApicBase, 0xFEE0_0000 | (1 << 11) | (1 << 10) | (apic.IsBootstrapProcessor ? 1UL << 8 : 0)));
        Assert.True(apic.TryWriteMsr(0x80F, 0x1FF));
    }

    public static uint Read(LocalApic apic, ulong offset) => (uint)apic.MmioRead(offset, 4);

    public static bool IrrHas(LocalApic apic, byte vector)
        => (Read(apic, ApicRegs.Irr + (ulong)(vector >> 5) * 0x10) & (1u << (vector & 31))) != 0;

    public static bool IsrHas(LocalApic apic, byte vector)
        => (Read(apic, ApicRegs.Isr + (ulong)(vector >> 5) * 0x10) & (1u << (vector & 31))) != 0;

    public static bool TmrHas(LocalApic apic, byte vector)
        => (Read(apic, ApicRegs.Tmr + (ulong)(vector >> 5) * 0x10) & (1u << (vector & 31))) != 0;

    /// <summary>xAPIC IPI: destination into ICR high, command into ICR low (the write that sends).</summary>
    public static void SendIpi(LocalApic from, uint destination, uint icrLow)
    {
        from.MmioWrite(ApicRegs.IcrHigh, 4, destination << 24);
        from.MmioWrite(ApicRegs.IcrLow, 4, icrLow);
    }

    public static ApicInterrupt Fixed(uint destination, byte vector, bool level = false)
        => new(destination, false, ApicDeliveryMode.Fixed, vector, level);
}

/// <summary>xAPIC register offsets (SDM Vol. 3A table 11-1).</summary>
static class ApicRegs
{
    public const ulong Id = 0x20;
    public const ulong Version = 0x30;
    public const ulong Tpr = 0x80;
    public const ulong Ppr = 0xA0;
    public const ulong Eoi = 0xB0;
    public const ulong Ldr = 0xD0;
    public const ulong Dfr = 0xE0;
    public const ulong Svr = 0xF0;
    public const ulong Isr = 0x100;
    public const ulong Tmr = 0x180;
    public const ulong Irr = 0x200;
    public const ulong Esr = 0x280;
    public const ulong IcrLow = 0x300;
    public const ulong IcrHigh = 0x310;
    public const ulong LvtTimer = 0x320;
    public const ulong LvtLint0 = 0x350;
    public const ulong LvtLint1 = 0x360;
    public const ulong LvtError = 0x370;
    public const ulong InitialCount = 0x380;
    public const ulong CurrentCount = 0x390;
    public const ulong Divide = 0x3E0;
}
