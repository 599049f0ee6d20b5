using System.Diagnostics;
using SharpVisor.Core;
using SharpVisor.Machine.Acpi;
using SharpVisor.Machine.Boot;
using Xunit.Abstractions;

namespace SharpVisor.Machine.Tests.Acpi;

/// <summary>
/// Cross-checks the tables with ACPICA's iasl (Debian package acpica-tools): every table must
/// disassemble cleanly and the DSDT's disassembly must compile again without errors.
/// </summary>
public sealed class IaslTests(ITestOutputHelper output)
{
    static string? FindIasl() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, "iasl")).FirstOrDefault(File.Exists);

    static (int Exit, string Text) Run(string iasl, string directory, params string[] args)
    {
        var psi = new ProcessStartInfo(iasl) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), "iasl hung");
        return (p.ExitCode, stdout + stderr.Result);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // x2APIC IDs, no HPET, no _PRT, no COM1
    public void IaslDisassemblesEveryTableWithoutErrors(bool variant)
    {
        string? iasl = FindIasl();
        if (iasl is null)
        {
            // xunit 2 has no dynamic skip: say so loudly and pass.
            output.WriteLine("SKIPPED: iasl not found; install Debian's acpica-tools (apt-get install acpica-tools) to run this check");
            return;
        }
        using var memory = new GuestMemory(3UL << 30);
        var description = AcpiMachineDescription.ForMachine(memory, 4) with { ExtraTables = [AcpiTablesTests.FakeDmar()] };
        if (variant)
        {
            description = description with { ApicIds = [0, 1, 256, 300], HpetAddress = null, PciIntxGsiBase = null, Com1Port = null };
        }
        var tables = AcpiTables.Build(description, AcpiRegion.AtTopOfLowRam(memory));
        string dir = Directory.CreateTempSubdirectory("sv-iasl").FullName;
        try
        {
            foreach (string signature in tables.TableAddresses.Keys)
            {
                File.WriteAllBytes(Path.Combine(dir, signature.ToLowerInvariant() + ".dat"), tables.Table(signature));
                var (exit, text) = Run(iasl, dir, "-d", signature.ToLowerInvariant() + ".dat");
                output.WriteLine($"--- iasl -d {signature}: exit {exit}\n{text}");
                Assert.Equal(0, exit);
                string dsl = File.ReadAllText(Path.Combine(dir, signature.ToLowerInvariant() + ".dsl"));
                output.WriteLine(dsl);
                Assert.DoesNotContain("Error", text, StringComparison.OrdinalIgnoreCase);
                Assert.DoesNotContain("Warning", text, StringComparison.OrdinalIgnoreCase);
                Assert.DoesNotContain("Invalid", dsl, StringComparison.Ordinal);
                Assert.DoesNotContain("Incorrect", dsl, StringComparison.Ordinal);
                Assert.DoesNotContain("****", dsl, StringComparison.Ordinal);
            }
            var compiled = Run(iasl, dir, "-p", "dsdt-recompiled", "dsdt.dsl");
            output.WriteLine($"--- iasl dsdt.dsl: exit {compiled.Exit}\n{compiled.Text}");
            Assert.Equal(0, compiled.Exit);
            Assert.Contains("0 Errors", compiled.Text, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
