using SharpVisor.Devices.Iommu;

namespace SharpVisor.Devices.Tests.Iommu;

/// <summary>The one cache type behind the context cache, IOTLB, PASID cache and device-TLBs.</summary>
public class SetAssociativeCacheTests
{
    struct Item
    {
        public int Key;
        public int Value;
    }

    struct ByKey(int key) : ICacheSelector<Item>
    {
        public readonly bool Matches(in Item e) => e.Key == key;
    }

    struct EvenKeys : ICacheSelector<Item>
    {
        public int Seen;
        public bool Matches(in Item e)
        {
            Seen++;
            return e.Key % 2 == 0;
        }
    }

    static bool Insert(SetAssociativeCache<Item> cache, int key, int value, out Item victim, out bool replaced)
    {
        var tag = new ByKey(key);
        return cache.Insert(key, ref tag, new Item { Key = key, Value = value }, out victim, out replaced);
    }

    static bool Get(SetAssociativeCache<Item> cache, int key, out int value)
    {
        var tag = new ByKey(key);
        bool hit = cache.TryGet(key, ref tag, out var item);
        value = item.Value;
        return hit;
    }

    [Fact]
    public void LeastRecentlyUsedWayOfTheSetIsEvicted()
    {
        var cache = new SetAssociativeCache<Item>(sets: 2, ways: 2);
        // Keys 0, 2, 4 share set 0 (key & 1).
        Assert.False(Insert(cache, 0, 10, out _, out _));
        Assert.False(Insert(cache, 2, 20, out _, out _));
        Assert.True(Get(cache, 0, out _));                       // 2 is now the least recently used
        Assert.True(Insert(cache, 4, 40, out var victim, out bool replaced));
        Assert.Equal(2, victim.Key);
        Assert.True(replaced);
        Assert.False(Get(cache, 2, out _));
        Assert.True(Get(cache, 0, out int v0));
        Assert.Equal(10, v0);
        Assert.Equal(2, cache.Count);
        // The other set is untouched by set 0's pressure.
        Assert.False(Insert(cache, 1, 11, out _, out _));
        Assert.Equal(3, cache.Count);
    }

    [Fact]
    public void SameTagIsOverwrittenNotDuplicated()
    {
        var cache = new SetAssociativeCache<Item>(sets: 1, ways: 4);
        Insert(cache, 7, 1, out _, out _);
        Assert.False(Insert(cache, 7, 2, out _, out bool replaced));
        Assert.True(replaced);
        Assert.Equal(1, cache.Count);
        Assert.True(Get(cache, 7, out int v));
        Assert.Equal(2, v);
    }

    [Fact]
    public void RemoveAllVisitsValidEntriesAndCountsRemovals()
    {
        var cache = new SetAssociativeCache<Item>(sets: 4, ways: 2);
        for (int k = 0; k < 6; k++)
        {
            Insert(cache, k, k, out _, out _);
        }
        var even = new EvenKeys();
        Assert.Equal(3, cache.RemoveAll(ref even));
        Assert.Equal(6, even.Seen);                              // only valid entries are offered
        Assert.Equal(3, cache.Count);
        Assert.False(Get(cache, 4, out _));
        Assert.True(Get(cache, 5, out _));
        cache.Clear();
        Assert.Equal(0, cache.Count);
        Assert.False(Get(cache, 5, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SetAssociativeCache<Item>(3, 2));
    }
}
