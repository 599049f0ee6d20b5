using System.Buffers.Binary;
using System.Text;
using SharpVisor.Core;
using SharpVisor.Machine.Boot;
using static SharpVisor.Machine.Tests.Boot.SyntheticImages;

namespace SharpVisor.Machine.Tests.Boot;

public sealed class LinuxLoaderTests : IDisposable
{
    const ulong RsdpAddress = 0x7FE_0000;
    readonly GuestMemory _memory = new(128UL << 20);
    readonly E820Map _e820;

    public LinuxLoaderTests() => _e820 = E820Map.ForMachine(_memory, AcpiRegion.AtTopOfLowRam(_memory), 0xB000_0000, 0x1000_0000);

    public void Dispose() => _memory.Dispose();

    LinuxBootResult LoadBz(byte[]? initrd = null, string cmdline = "console=ttyS0", BzOptions? options = null, LinuxEntryKind entry = LinuxEntryKind.Auto) =>
        LinuxLoader.Load(_memory, new LinuxBootRequest(BzImage(Gzip(Elf64()), options), initrd, cmdline, _e820, RsdpAddress, entry));

    byte[] Read(ulong gpa, int length)
    {
        var b = new byte[length];
        Assert.True(_memory.TryRead(gpa, b));
        return b;
    }

    [Fact]
    public void BzImageEntersStartup64InLongModeWithRsiAtBootParams()
    {
        var r = LoadBz();
        Assert.Equal(BootMode.Long64, r.Entry.Mode);
        Assert.Equal(KernelBase, r.Entry.Rip);
        Assert.Equal(BootLayout.ZeroPage, r.Entry.Rsi);
        // Documentation/x86/boot.rst, 64-bit boot protocol: CS = __BOOT_CS (0x10), DS/ES/SS = __BOOT_DS (0x18), flat.
        Assert.Equal(0x10, r.Entry.Cs.Selector);
        Assert.True(r.Entry.Cs.Long);
        Assert.Equal(0x18, r.Entry.Data.Selector);
        Assert.Equal(0UL, r.Entry.Data.Base);
        Assert.Equal(uint.MaxValue, r.Entry.Data.Limit);
        Assert.NotEqual(0UL, r.Entry.Cr0 & BootStructures.Cr0Paging);
        Assert.NotEqual(0UL, r.Entry.Cr4 & BootStructures.Cr4Pae);
        Assert.Equal(BootStructures.EferLme | BootStructures.EferLma, r.Entry.Efer);
    }

    [Fact]
    public void VirtualEntryPointIsTranslatedThroughItsSegment()
    {
        byte[] elf = Elf64(entry: KernelVirtualBase + 0x10);
        var r = LinuxLoader.Load(_memory, new LinuxBootRequest(BzImage(Gzip(elf)), null, "", _e820, 0));
        Assert.Equal(KernelBase + 0x10, r.Entry.Rip);
    }

    [Fact]
    public void SegmentsAreCopiedAndBssIsZeroed()
    {
        _memory.GetSpan(KernelBase, (int)(TextSize + BssSize)).Fill(0xCC);
        LoadBz();
        Assert.Equal(Text(), Read(KernelBase, TextSize));
        Assert.All(Read(KernelBase + TextSize, (int)BssSize), b => Assert.Equal(0, b));
    }

    [Fact]
    public void GdtMatchesTheEntrySegments()
    {
        var r = LoadBz();
        ulong code = _memory.ReadU64(r.Entry.GdtBase + 0x10);
        ulong data = _memory.ReadU64(r.Entry.GdtBase + 0x18);
        // SDM 3.4.5: P (bit 47), S (44), L (53) for 64-bit code; D/B (54) clear when L is set.
        Assert.Equal(1UL, (code >> 47) & 1);
        Assert.Equal(1UL, (code >> 53) & 1);
        Assert.Equal(0UL, (code >> 54) & 1);
        Assert.Equal(0xAUL, (code >> 40) & 0xA); // code, readable
        Assert.Equal(0x2UL, (data >> 40) & 0xA); // data, writable
        Assert.Equal(0xFFFFUL, data & 0xFFFF);   // limit 0xFFFFF with G = 1: 4 GiB flat
        Assert.Equal(1UL, (data >> 55) & 1);
        Assert.True(r.Entry.GdtLimit >= 0x1F);
    }

    [Theory]
    [InlineData(0x0UL)]
    [InlineData(0x100_0000UL)]
    [InlineData(0xFEE0_0123UL)]
    [InlineData(0xFFFF_FFFFUL)]
    public void PageTablesIdentityMapTheFirst4GiB(ulong address)
    {
        var r = LoadBz();
        // 4-level walk (SDM 4.5): PML4E -> PDPTE -> PDE with PS = 1 (2 MiB page).
        ulong pml4e = _memory.ReadU64(r.Entry.Cr3 + ((address >> 39) & 511) * 8);
        Assert.Equal(3UL, pml4e & 3);
        ulong pdpte = _memory.ReadU64((pml4e & 0xF_FFFF_F000) + ((address >> 30) & 511) * 8);
        Assert.Equal(3UL, pdpte & 3);
        ulong pde = _memory.ReadU64((pdpte & 0xF_FFFF_F000) + ((address >> 21) & 511) * 8);
        Assert.Equal(0x83UL, pde & 0x83);
        Assert.Equal(address, (pde & 0xF_FFE0_0000) | (address & 0x1F_FFFF));
    }

    [Fact]
    public void BootParamsCarryTheSetupHeaderAndLoaderFields()
    {
        byte[] initrd = Encoding.ASCII.GetBytes("initrd contents");
        var r = LoadBz(initrd, "console=ttyS0 root=/dev/vda");
        byte[] zp = Read(BootLayout.ZeroPage, 4096);
        var p = zp.AsSpan();
        Assert.Equal(0xAA55, BinaryPrimitives.ReadUInt16LittleEndian(p[0x1FE..]));
        Assert.Equal("HdrS", Encoding.ASCII.GetString(zp, 0x202, 4));
        Assert.Equal(0x020F, BinaryPrimitives.ReadUInt16LittleEndian(p[0x206..]));
        Assert.Equal(0xFF, zp[0x210]);                          // type_of_loader
        Assert.Equal(0x81, zp[0x211] & 0x81);                   // LOADED_HIGH | CAN_USE_HEAP
        Assert.Equal(0, zp[0x211] & 0x02);                      // no KASLR_FLAG: the kernel was not randomized
        Assert.Equal(0xFE00, BinaryPrimitives.ReadUInt16LittleEndian(p[0x224..]));
        uint cmdline = BinaryPrimitives.ReadUInt32LittleEndian(p[0x228..]);
        Assert.Equal("console=ttyS0 root=/dev/vda\0", Encoding.ASCII.GetString(Read(cmdline, 28)));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(p[0x0C8..])); // ext_cmd_line_ptr
        Assert.Equal((uint)r.InitrdAddress, BinaryPrimitives.ReadUInt32LittleEndian(p[0x218..]));
        Assert.Equal((uint)initrd.Length, BinaryPrimitives.ReadUInt32LittleEndian(p[0x21C..]));
        Assert.Equal(initrd, Read(r.InitrdAddress, initrd.Length));
        Assert.Equal(RsdpAddress, BinaryPrimitives.ReadUInt64LittleEndian(p[0x070..]));
        // E820 table at 0x2D0, count at 0x1E8 (zero-page.rst).
        Assert.Equal(_e820.Entries.Count, zp[0x1E8]);
        for (int i = 0; i < _e820.Entries.Count; i++)
        {
            var e = p.Slice(0x2D0 + 20 * i, 20);
            Assert.Equal(_e820.Entries[i].Address, BinaryPrimitives.ReadUInt64LittleEndian(e));
            Assert.Equal(_e820.Entries[i].Length, BinaryPrimitives.ReadUInt64LittleEndian(e[8..]));
            Assert.Equal((uint)_e820.Entries[i].Type, BinaryPrimitives.ReadUInt32LittleEndian(e[16..]));
        }
    }

    [Fact]
    public void InitrdIsPageAlignedBelowInitrdAddrMaxAndClearOfTheKernel()
    {
        var r = LoadBz(new byte[100_000], options: new BzOptions { InitrdAddrMax = 0x3FF_FFFF });
        Assert.Equal(0UL, r.InitrdAddress % 4096);
        Assert.True(r.InitrdAddress + r.InitrdSize <= 0x400_0000);
        Assert.True(r.InitrdAddress >= r.KernelEnd, $"initrd 0x{r.InitrdAddress:x} overlaps the kernel ending at 0x{r.KernelEnd:x}");
        // init_size counts from the load address: the initrd keeps out of it.
        Assert.True(r.KernelEnd >= KernelBase + 0x40_0000);
    }

    [Fact]
    public void InitrdGoesAsHighAsPossibleAndAvoidsTheAcpiRegion()
    {
        var r = LoadBz(new byte[100_000]);
        var acpi = AcpiRegion.AtTopOfLowRam(_memory);
        Assert.True(r.InitrdAddress + r.InitrdSize <= acpi.Base);
        Assert.True(acpi.Base - (r.InitrdAddress + r.InitrdSize) < 4096);
    }

    [Fact]
    public void InitrdThatDoesNotFitIsAUserError()
    {
        var e = Assert.Throws<UserErrorException>(() => LoadBz(new byte[200 << 20]));
        Assert.Contains("initrd", e.Message);
    }

    [Fact]
    public void SmallInitrdAddrMaxPushesTheInitrdBelowTheKernel()
    {
        // Only 1 MiB .. 16 MiB is below initrd_addr_max: the initrd must go there, under the kernel.
        var r = LoadBz(new byte[1 << 20], options: new BzOptions { InitrdAddrMax = 0xFF_FFFF });
        Assert.True(r.InitrdAddress >= 0x10_0000);
        Assert.True(r.InitrdAddress + r.InitrdSize <= KernelBase);
    }

    [Fact]
    public void CommandLineLongerThanCmdlineSizeIsAUserError()
    {
        var e = Assert.Throws<UserErrorException>(() => LoadBz(cmdline: new string('x', 100), options: new BzOptions { CmdlineSize = 99 }));
        Assert.Contains("at most 99", e.Message);
        LoadBz(cmdline: new string('x', 99), options: new BzOptions { CmdlineSize = 99 }); // exactly the limit is fine
    }

    [Fact]
    public void KernelBeyondRamIsAUserError()
    {
        using var small = new GuestMemory(16UL << 20);
        var e820 = E820Map.ForMachine(small, AcpiRegion.AtTopOfLowRam(small));
        var e = Assert.Throws<UserErrorException>(() =>
            LinuxLoader.Load(small, new LinuxBootRequest(BzImage(Gzip(Elf64())), null, "", e820, 0)));
        Assert.Contains("more memory", e.Message);
    }

    [Fact]
    public void ElfSegmentOutsideRamIsAUserError()
    {
        var elf = ElfImage.Parse(Elf64(paddr: 0xF000_0000));
        var e = Assert.Throws<UserErrorException>(() => elf.Load(_memory));
        Assert.Contains("does not fit", e.Message);
    }

    [Fact]
    public void BareVmlinuxBootsThroughPvh()
    {
        byte[] initrd = new byte[5000];
        var r = LinuxLoader.Load(_memory, new LinuxBootRequest(Elf64(), initrd, "console=hvc0", _e820, RsdpAddress));
        Assert.Equal(BootMode.Protected32, r.Entry.Mode);
        Assert.Equal(KernelBase + PvhEntryOffset, r.Entry.Rip);
        Assert.Equal(BootLayout.StartInfo, r.Entry.Rbx);
        Assert.Equal(0UL, r.Entry.Cr0 & BootStructures.Cr0Paging);
        Assert.False(r.Entry.Cs.Long);
        Assert.True(r.Entry.Cs.DefaultBig);
        // PVH wants TR on a 32-bit TSS (start_info.h / xen docs/misc/pvh.pandoc).
        Assert.Equal(0xB, r.Entry.Tr.Type);

        ulong si = BootLayout.StartInfo;
        Assert.Equal(PvhStartInfo.Magic, _memory.ReadU32(si));
        Assert.Equal(1u, _memory.ReadU32(si + 4));
        Assert.Equal(1u, _memory.ReadU32(si + 12));                    // nr_modules
        ulong modlist = _memory.ReadU64(si + 16);
        Assert.Equal(r.InitrdAddress, _memory.ReadU64(modlist));
        Assert.Equal((ulong)initrd.Length, _memory.ReadU64(modlist + 8));
        ulong cmdline = _memory.ReadU64(si + 24);
        Assert.Equal("console=hvc0\0", Encoding.ASCII.GetString(Read(cmdline, 13)));
        Assert.Equal(RsdpAddress, _memory.ReadU64(si + 32));
        ulong memmap = _memory.ReadU64(si + 40);
        Assert.Equal((uint)_e820.Entries.Count, _memory.ReadU32(si + 48));
        for (int i = 0; i < _e820.Entries.Count; i++)
        {
            Assert.Equal(_e820.Entries[i].Address, _memory.ReadU64(memmap + (ulong)i * 24));
            Assert.Equal(_e820.Entries[i].Length, _memory.ReadU64(memmap + (ulong)i * 24 + 8));
            Assert.Equal((uint)_e820.Entries[i].Type, _memory.ReadU32(memmap + (ulong)i * 24 + 16));
        }
    }

    [Fact]
    public void BzImageCanBeForcedThroughPvh()
    {
        var r = LoadBz(entry: LinuxEntryKind.Pvh);
        Assert.Equal(BootMode.Protected32, r.Entry.Mode);
        Assert.Equal(KernelBase + PvhEntryOffset, r.Entry.Rip);
    }

    [Fact]
    public void PvhWithoutTheNoteIsAUserError()
    {
        var e = Assert.Throws<UserErrorException>(() =>
            LinuxLoader.Load(_memory, new LinuxBootRequest(Elf64(pvhNote: false), null, "", _e820, 0, LinuxEntryKind.Pvh)));
        Assert.Contains("XEN_ELFNOTE_PHYS32_ENTRY", e.Message);
    }

    [Fact]
    public void BareVmlinuxWithoutPvhNoteUsesTheLongModeEntry()
    {
        var r = LinuxLoader.Load(_memory, new LinuxBootRequest(Elf64(pvhNote: false), null, "", _e820, 0));
        Assert.Equal(BootMode.Long64, r.Entry.Mode);
        Assert.Equal("HdrS", Encoding.ASCII.GetString(Read(BootLayout.ZeroPage + 0x202, 4)));
    }

    [Fact]
    public void GarbageIsNotAKernel()
    {
        var e = Assert.Throws<UserErrorException>(() =>
            LinuxLoader.Load(_memory, new LinuxBootRequest(new byte[4096], null, "", _e820, 0)));
        Assert.Contains("not a Linux kernel", e.Message);
    }

    [Theory]
    [InlineData(8)]   // ELF class
    [InlineData(18)]  // e_machine
    [InlineData(32)]  // e_phoff
    public void MalformedElfIsAUserError(int field)
    {
        byte[] elf = Elf64();
        elf[field] = 0x77;
        if (field == 8)
        {
            elf[4] = 9;
        }
        Assert.Throws<UserErrorException>(() => ElfImage.Parse(elf));
    }

    /// <summary>
    /// A segment whose p_paddr + p_memsz wraps around the address space is reported with those two
    /// fields (it used to blame p_filesz and p_memsz; issue 16 defect 4). An ELF32 address space ends at 4 GiB.
    /// </summary>
    [Fact]
    public void AWrappingSegmentIsReportedWithItsAddressAndSize()
    {
        var e64 = Assert.Throws<UserErrorException>(() => ElfImage.Parse(Elf64(pvhNote: false, paddr: 0xFFFF_FFFF_FFFF_F000)));
        Assert.Equal("kernel: ELF segment 0 at p_paddr 0xfffffffffffff000 with p_memsz 0x8000 wraps around the end of the 64-bit address space", e64.Message);
        var e32 = Assert.Throws<UserErrorException>(() => ElfImage.Parse(Elf32(0xFFFF_F000, 0xFFFF_F000, new byte[0x100], bss: 0x1000)));
        Assert.Equal("kernel: ELF segment 0 at p_paddr 0xfffff000 with p_memsz 0x1100 wraps around the end of the 32-bit address space", e32.Message);
        byte[] shrunk = Elf64(pvhNote: false);
        BitConverter.GetBytes(0x100UL).CopyTo(shrunk, 64 + 40); // p_memsz below p_filesz 0x3000
        Assert.Equal("kernel: ELF segment 0 has p_filesz 0x3000 larger than p_memsz 0x100", Assert.Throws<UserErrorException>(() => ElfImage.Parse(shrunk)).Message);
    }

    [Fact]
    public void TruncatedElfSegmentIsAUserError()
    {
        byte[] elf = Elf64(pvhNote: false);
        var e = Assert.Throws<UserErrorException>(() => ElfImage.Parse(elf[..0x1800]));
        Assert.Contains("past the end", e.Message);
    }
}
