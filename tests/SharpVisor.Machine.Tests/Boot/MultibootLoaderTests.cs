using System.Text;
using SharpVisor.Core;
using SharpVisor.Machine.Boot;
using static SharpVisor.Machine.Tests.Boot.SyntheticImages;

namespace SharpVisor.Machine.Tests.Boot;

public sealed class MultibootLoaderTests : IDisposable
{
    const uint LoadAddr = 0x10_0000;
    readonly GuestMemory _memory = new(64UL << 20);
    readonly E820Map _e820;

    public MultibootLoaderTests() => _e820 = E820Map.ForMachine(_memory, AcpiRegion.AtTopOfLowRam(_memory));

    public void Dispose() => _memory.Dispose();

    /// <summary>An a.out-kludge kernel: 0x40 bytes of preamble, the header, then code; loaded at 1 MiB.</summary>
    static byte[] AoutKernel(uint flags, uint bssBytes = 0x2000, uint entryOffset = 0x80)
    {
        var file = new byte[0x1000];
        for (int i = 0x60; i < file.Length; i++)
        {
            file[i] = (byte)i;
        }
        const int headerOffset = 0x40;
        uint loadEnd = LoadAddr + (uint)file.Length;
        WriteMultibootHeader(file, headerOffset, flags | MultibootLoader.FlagAoutKludge,
            [LoadAddr + headerOffset, LoadAddr, loadEnd, loadEnd + bssBytes, LoadAddr + entryOffset]);
        return file;
    }

    string ReadString(ulong gpa)
    {
        var bytes = new List<byte>();
        for (ulong a = gpa; ; a++)
        {
            var b = new byte[1];
            Assert.True(_memory.TryRead(a, b));
            if (b[0] == 0)
            {
                return Encoding.ASCII.GetString(bytes.ToArray());
            }
            bytes.Add(b[0]);
        }
    }

    [Fact]
    public void AoutKernelEntersWithMagicAndInfoInFlat32BitMode()
    {
        byte[] kernel = AoutKernel(MultibootLoader.FlagPageAlign | MultibootLoader.FlagMemoryInfo);
        _memory.GetSpan(LoadAddr + 0x1000, 0x2000).Fill(0xEE);
        var r = MultibootLoader.Load(_memory, kernel, "test arg", [], _e820);
        // Multiboot spec 3.2: EAX = 0x2BADB002, EBX = info, 32-bit protected mode, paging off.
        Assert.Equal(BootMode.Protected32, r.Entry.Mode);
        Assert.Equal(0x2BADB002UL, r.Entry.Rax);
        Assert.Equal(r.InfoAddress, r.Entry.Rbx);
        Assert.Equal(LoadAddr + 0x80UL, r.Entry.Rip);
        Assert.Equal(0UL, r.Entry.Cr0 & BootStructures.Cr0Paging);
        Assert.Equal(uint.MaxValue, r.Entry.Cs.Limit);
        var loaded = new byte[0x1000];
        Assert.True(_memory.TryRead(LoadAddr, loaded));
        Assert.Equal(kernel, loaded);
        var bss = new byte[0x2000];
        Assert.True(_memory.TryRead(LoadAddr + 0x1000, bss));
        Assert.All(bss, b => Assert.Equal(0, b));
    }

    [Fact]
    public void InfoStructureDescribesMemoryCmdlineModulesAndMap()
    {
        byte[] kernel = AoutKernel(MultibootLoader.FlagPageAlign | MultibootLoader.FlagMemoryInfo);
        MultibootModule[] modules = [new(new byte[100], "mod one"), new(new byte[5000], "mod two")];
        var r = MultibootLoader.Load(_memory, kernel, "console=com1", modules, _e820);
        ulong mbi = r.InfoAddress;
        uint flags = _memory.ReadU32(mbi);
        Assert.Equal(0x24Du, flags & 0x24D); // mem, cmdline, mods, mmap, boot_loader_name (spec 3.3)
        Assert.Equal(639u, _memory.ReadU32(mbi + 4));                              // mem_lower: 0x9FC00 / 1024
        Assert.Equal((uint)((AcpiRegion.AtTopOfLowRam(_memory).Base - 0x10_0000) / 1024), _memory.ReadU32(mbi + 8)); // mem_upper
        Assert.Equal("console=com1", ReadString(_memory.ReadU32(mbi + 16)));
        Assert.Equal("SharpVisor", ReadString(_memory.ReadU32(mbi + 64)));

        Assert.Equal(2u, _memory.ReadU32(mbi + 20));
        ulong mods = _memory.ReadU32(mbi + 24);
        for (int i = 0; i < 2; i++)
        {
            uint start = _memory.ReadU32(mods + (ulong)i * 16);
            uint end = _memory.ReadU32(mods + (ulong)i * 16 + 4);
            Assert.Equal(0u, start % 4096);                       // flag bit 0: page-aligned modules
            Assert.Equal((uint)modules[i].Data.Length, end - start);
            Assert.True(start >= r.ImageEnd);                      // after the kernel's bss
            Assert.Equal(modules[i].CommandLine, ReadString(_memory.ReadU32(mods + (ulong)i * 16 + 8)));
        }

        uint mmapLength = _memory.ReadU32(mbi + 44);
        ulong mmap = _memory.ReadU32(mbi + 48);
        Assert.Equal((uint)(_e820.Entries.Count * 24), mmapLength);
        for (int i = 0; i < _e820.Entries.Count; i++)
        {
            ulong e = mmap + (ulong)i * 24;
            Assert.Equal(20u, _memory.ReadU32(e)); // size excludes the size field itself
            Assert.Equal(_e820.Entries[i].Address, _memory.ReadU64(e + 4));
            Assert.Equal(_e820.Entries[i].Length, _memory.ReadU64(e + 12));
            Assert.Equal((uint)_e820.Entries[i].Type, _memory.ReadU32(e + 20));
        }
    }

    [Fact]
    public void Elf32KernelWithoutAddressFieldsLoadsBySegments()
    {
        byte[] code = new byte[0x800];
        Random.Shared.NextBytes(code);
        byte[] kernel = Elf32(0x20_0000, 0x20_0010, code, bss: 0x1000);
        WriteMultibootHeader(kernel, 0x100, MultibootLoader.FlagMemoryInfo); // inside the first 8 KiB (in the code)
        var r = MultibootLoader.Load(_memory, kernel, "", [], _e820);
        Assert.Equal(0x20_0010UL, r.Entry.Rip);
        var loaded = new byte[code.Length];
        Assert.True(_memory.TryRead(0x20_0000, loaded));
        Assert.Equal(kernel.AsSpan(0x100, code.Length).ToArray(), loaded);
    }

    [Fact]
    public void ModulesAreOnlySixteenByteAlignedWithoutFlagBit0()
    {
        byte[] kernel = AoutKernel(MultibootLoader.FlagMemoryInfo, bssBytes: 0x2010);
        var r = MultibootLoader.Load(_memory, kernel, "", [new(new byte[10], "a"), new(new byte[10], "b")], _e820);
        Assert.Equal(16UL, r.Modules[1].Start - r.Modules[0].Start);
    }

    [Fact]
    public void BadChecksumMeansNoHeader()
    {
        byte[] file = new byte[0x1000];
        WriteMultibootHeader(file, 0x40, 0, badChecksum: true);
        Assert.Null(MultibootLoader.FindHeader(file));
        var e = Assert.Throws<UserErrorException>(() => MultibootLoader.Load(_memory, new byte[0x1000], "", [], _e820));
        Assert.Contains("no Multiboot header", e.Message);
    }

    /// <summary>
    /// A kernel whose only Multiboot magic has a bad checksum is named as such, not as "not a Linux
    /// kernel" (issue 16 defect 4): the user is told what is wrong with the image they gave.
    /// </summary>
    [Fact]
    public void ABadChecksumIsReportedAsABadMultibootChecksum()
    {
        byte[] file = AoutKernel(0);
        WriteMultibootHeader(file, 0x40, MultibootLoader.FlagAoutKludge, badChecksum: true);
        const string expected = "kernel: Multiboot header at 0x40 has a bad checksum: magic 0x1badb002 + flags 0x10000 + checksum 0xe4514fff is 0x1, not 0";
        Assert.Equal(expected, Assert.Throws<UserErrorException>(() => MultibootLoader.Load(_memory, file, "", [], _e820)).Message);
        var linux = Assert.Throws<UserErrorException>(() => LinuxLoader.Load(_memory, new LinuxBootRequest(file, null, "", _e820, 0)));
        Assert.Equal(expected, linux.Message);
    }

    [Fact]
    public void HeaderBeyondTheFirst8KiBIsNotFound()
    {
        byte[] file = new byte[0x3000];
        WriteMultibootHeader(file, 8192, 0);
        Assert.Null(MultibootLoader.FindHeader(file));
        WriteMultibootHeader(file, 8192 - 12, 0);
        Assert.NotNull(MultibootLoader.FindHeader(file));
    }

    [Fact]
    public void MisalignedHeaderIsNotFound()
    {
        byte[] file = new byte[0x1000];
        WriteMultibootHeader(file, 0x42, 0);
        Assert.Null(MultibootLoader.FindHeader(file));
    }

    [Fact]
    public void UnsupportedRequiredFlagIsRefused()
    {
        byte[] file = new byte[0x1000];
        WriteMultibootHeader(file, 0x40, 1 << 3);
        var e = Assert.Throws<UserErrorException>(() => MultibootLoader.FindHeader(file));
        Assert.Contains("requires features 0x8", e.Message);
    }

    [Fact]
    public void EntryOutsideTheImageIsRefused()
    {
        byte[] kernel = AoutKernel(0, entryOffset: 0x10_0000);
        var e = Assert.Throws<UserErrorException>(() => MultibootLoader.Load(_memory, kernel, "", [], _e820));
        Assert.Contains("entry_addr", e.Message);
    }

    [Fact]
    public void LoadRangePastTheFileIsRefused()
    {
        byte[] kernel = new byte[0x200];
        WriteMultibootHeader(kernel, 0, MultibootLoader.FlagAoutKludge, [LoadAddr, LoadAddr, LoadAddr + 0x1000, 0, LoadAddr]);
        var e = Assert.Throws<UserErrorException>(() => MultibootLoader.Load(_memory, kernel, "", [], _e820));
        Assert.Contains("past the end", e.Message);
    }

    [Fact]
    public void ImageOutsideRamIsRefused()
    {
        byte[] kernel = new byte[0x200];
        const uint high = 0x8000_0000;
        WriteMultibootHeader(kernel, 0, MultibootLoader.FlagAoutKludge, [high, high, 0, 0, high]);
        var e = Assert.Throws<UserErrorException>(() => MultibootLoader.Load(_memory, kernel, "", [], _e820));
        Assert.Contains("not in usable guest RAM", e.Message);
    }
}
