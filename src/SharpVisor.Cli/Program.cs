namespace SharpVisor.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("sharpvisor: the machine is not assembled yet; no command is available");
        return 2;
    }
}
