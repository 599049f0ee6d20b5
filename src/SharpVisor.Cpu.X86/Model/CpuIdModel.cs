namespace SharpVisor.Cpu.X86.Model;

/// <summary>
/// The processor SharpVisor presents through CPUID (SDM Vol. 2A, CPUID). Chosen deliberately:
/// only features the interpreter implements exactly are advertised, because the kernel and glibc
/// select code paths from these bits. The vendor is Intel; IA32_ARCH_CAPABILITIES reports the CPU
/// as not affected by Meltdown/MDS/TAA-class issues so Linux does not enable page-table isolation
/// (a 10x syscall cost under a software CPU; see shared/design/linux-guest.md).
/// </summary>
public sealed class CpuIdModel
{
    // CPUID.1:EDX (SDM Vol. 2A Table 3-11).
    const uint Fpu = 1 << 0, De = 1 << 2, Pse = 1 << 3, Tsc = 1 << 4, Msr = 1 << 5, Pae = 1 << 6, Mce = 1 << 7, Cx8 = 1 << 8;
    const uint Apic = 1 << 9, Sep = 1 << 11, Mtrr = 1 << 12, Pge = 1 << 13, Mca = 1 << 14, Cmov = 1 << 15, Pat = 1 << 16;
    const uint Pse36 = 1 << 17, Clfsh = 1 << 19, Mmx = 1 << 23, Fxsr = 1 << 24, Sse = 1 << 25, Sse2 = 1 << 26;
    // CPUID.1:ECX (Table 3-10).
    const uint Cx16 = 1 << 13, X2Apic = 1 << 21, TscDeadline = 1 << 24;
    // CPUID.80000001:EDX / ECX.
    const uint Syscall = 1 << 11, Nx = 1 << 20, Page1G = 1 << 26, Rdtscp = 1 << 27, Lm = 1 << 29;
    const uint LahfLm = 1 << 0, Prefetchw = 1 << 8;

    /// <summary>Family 6, model 0x8F (a recent server core), stepping 8 — see ArchCapabilities.</summary>
    public uint Signature { get; init; } = 0x0008_06F8;
    public int LogicalProcessors { get; init; } = 1;

    /// <summary>TSC rate assumed by the 3-argument <see cref="Query(uint, uint, uint)"/> (feature queries in tests);
    /// the vCPU always passes its platform's real rate.</summary>
    public const long DefaultTscHz = 2_000_000_000;

    /// <summary>
    /// IA32_ARCH_CAPABILITIES: RDCL_NO(0), IBRS_ALL(1), SKIP_L1DFL_VMENTRY(3), SSB_NO(4), MDS_NO(5),
    /// PSCHANGE_MC_NO(6), TAA_NO(8), SBDR_SSDP_NO(13), FBSDP_NO(14), PSDP_NO(15), BHI_NO(20),
    /// PBRSB_NO(24), GDS_NO(26), RFDS_NO(27). An interpreter has no branch predictor, so BHI_NO and
    /// PBRSB_NO are true; without BHI_NO, stable 6.1 kernels add a branch-history clearing loop to
    /// every system call.
    /// </summary>
    public ulong ArchCapabilities { get; init; } =
        (1UL << 0) | (1UL << 1) | (1UL << 3) | (1UL << 4) | (1UL << 5) | (1UL << 6) | (1UL << 8) |
        (1UL << 13) | (1UL << 14) | (1UL << 15) | (1UL << 20) | (1UL << 24) | (1UL << 26) | (1UL << 27);

    /// <summary>The "core crystal" of CPUID 0x15: must equal the local APIC timer's input clock.</summary>
    public long CrystalHz { get; init; } = 1_000_000_000;

    public uint MaxBasicLeaf => 0x16;
    public uint MaxExtendedLeaf => 0x8000_0008;

    /// <summary>Answers CPUID for (leaf, subleaf) as processor <paramref name="apicId"/>.</summary>
    public (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(uint leaf, uint subleaf, uint apicId) => Query(leaf, subleaf, apicId, DefaultTscHz);

    /// <summary>
    /// As <see cref="Query(uint, uint, uint)"/> with the TSC rate RDTSC really counts at
    /// (<see cref="CpuPlatform.TscHz"/>), so leaves 15H/16H never disagree with the TSC.
    /// </summary>
    public (uint Eax, uint Ebx, uint Ecx, uint Edx) Query(uint leaf, uint subleaf, uint apicId, long tscHz)
    {
        if (leaf >= 0x8000_0000 ? leaf > MaxExtendedLeaf : leaf > MaxBasicLeaf)
        {
            // Out of range: Intel returns the highest basic leaf's data (SDM CPUID "INPUT EAX = 0").
            leaf = MaxBasicLeaf;
        }
        switch (leaf)
        {
            case 0:
                return (MaxBasicLeaf, 0x756E_6547, 0x6C65_746E, 0x4965_6E69); // "GenuineIntel"
            case 1:
                {
                    uint ebx = (apicId << 24) | ((uint)Math.Min(LogicalProcessors, 255) << 16) | (8 << 8); // CLFLUSH line 8*8=64
                    uint ecx = Cx16 | X2Apic | TscDeadline;
                    // MCE/MCA: CR4.MCE and the IA32_MCG_*/MCi_* MSRs exist (MsrAccess; banks never log
                    // an error). Without them Linux prints "mce: Unable to init MCE device (rc: -5)".
                    uint edx = Fpu | De | Pse | Tsc | Msr | Pae | Mce | Cx8 | Apic | Sep | Mtrr | Pge | Mca | Cmov | Pat | Pse36 | Clfsh | Mmx | Fxsr | Sse | Sse2;
                    if (LogicalProcessors > 1)
                    {
                        edx |= 1 << 28; // HTT: EBX[23:16] is valid
                    }
                    return (Signature, ebx, ecx, edx);
                }
            case 6:
                return (0, 0, 0, 0);
            case 7:
                // Structured extended features: EBX bit 1 IA32_TSC_ADJUST (implemented in MsrAccess),
                // EDX bit 29 IA32_ARCH_CAPABILITIES.
                return subleaf == 0 ? (0u, 1u << 1, 0u, 1u << 29) : (0u, 0u, 0u, 0u);
            case 0xB:
                {
                    // x2APIC topology: one thread per core, all cores in one package.
                    uint level = subleaf & 0xFF;
                    return level switch
                    {
                        0 => (0u, 1u, 0x100u | level, apicId),
                        1 => ((uint)ShiftFor(LogicalProcessors), (uint)LogicalProcessors, 0x200 | level, apicId),
                        _ => (0, 0, level, apicId),
                    };
                }
            case 0x15:
                // TSC/crystal ratio: EBX/EAX times the crystal clock in ECX (SDM CPUID leaf 15H).
                // Linux also takes the local APIC timer's input rate from ECX (native_calibrate_tsc
                // sets lapic_timer_period from it), so the crystal is the APIC timer's clock.
                return (1, (uint)(tscHz / CrystalHz), (uint)CrystalHz, 0);
            case 0x16:
                return ((uint)(tscHz / 1_000_000), (uint)(tscHz / 1_000_000), 100, 0);
            case 0x8000_0000:
                return (MaxExtendedLeaf, 0, 0, 0);
            case 0x8000_0001:
                // PREFETCHW ("3DNowPrefetch"): 0F 0D /1 executes as the hint it is (Semantics/Misc.cs).
                return (0, 0, LahfLm | Prefetchw, Syscall | Nx | Page1G | Rdtscp | Lm);
            case 0x8000_0002:
                return Brand(0);
            case 0x8000_0003:
                return Brand(16);
            case 0x8000_0004:
                return Brand(32);
            case 0x8000_0007:
                return (0, 0, 0, 1 << 8); // invariant TSC
            case 0x8000_0008:
                return ((uint)(48 << 8 | Cpu.PhysAddrBits), 0, 0, 0);
            default:
                return (0, 0, 0, 0);
        }
    }

    static int ShiftFor(int n) => n <= 1 ? 0 : 32 - System.Numerics.BitOperations.LeadingZeroCount((uint)(n - 1));

    const string BrandString = "SharpVisor virtual x86-64 CPU";

    static (uint, uint, uint, uint) Brand(int offset)
    {
        Span<byte> b = stackalloc byte[16];
        b.Clear();
        for (int i = 0; i < 16 && offset + i < BrandString.Length; i++)
        {
            b[i] = (byte)BrandString[offset + i];
        }
        return (BitConverter.ToUInt32(b), BitConverter.ToUInt32(b[4..]), BitConverter.ToUInt32(b[8..]), BitConverter.ToUInt32(b[12..]));
    }
}
