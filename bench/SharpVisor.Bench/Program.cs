namespace SharpVisor.Bench;

public static class Program
{
    public static int Main(string[] args)
    {
        string what = args.Length > 0 ? args[0] : "mips";
        double seconds = args.Length > 1 && double.TryParse(args[1], out double s) ? s : 3;
        switch (what)
        {
            case "mips":
                CpuMips.Run(seconds, args.Length > 2 ? args[2] : null);
                return 0;
            case "translate":
                CpuMips.TranslateCost((int)seconds * 100);
                return 0;
            case "iommu":
                IommuBench.Run(seconds);
                return 0;
            default:
                Console.Error.WriteLine("usage: SharpVisor.Bench mips|iommu [seconds] [interp|jit] | translate [hundreds of rounds]");
                return 2;
        }
    }
}
