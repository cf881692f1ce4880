//! `--partition hash:K/N | slice:K/N`: which share of the tests a run takes.
//! Shared by the command line (parsing) and the listing (selection).

/// One shard of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partition {
    /// Test goes to shard `hash(binary test) % total + 1`.
    Hash { shard: u64, total: u64 },
    /// Test number `i` (in list order, from 0) goes to shard `i % total + 1`.
    Slice { shard: u64, total: u64 },
}

impl Partition {
    /// Parses `hash:K/N` or `slice:K/N` (or nextest's name for it,
    /// `count:K/N`), with 1 <= K <= N.
    pub(crate) fn parse(text: &str) -> Result<Partition, String> {
        let usage = || format!("`{text}` is not a partition: use hash:K/N or slice:K/N (count:K/N), with 1 <= K <= N");
        let (kind, shares) = text.split_once(':').ok_or_else(usage)?;
        let (shard, total) = shares.split_once('/').ok_or_else(usage)?;
        let (shard, total): (u64, u64) = (shard.parse().map_err(|_| usage())?, total.parse().map_err(|_| usage())?);
        if shard == 0 || shard > total {
            return Err(usage());
        }
        match kind {
            "hash" => Ok(Partition::Hash { shard, total }),
            // nextest calls the same split `count`.
            "slice" | "count" => Ok(Partition::Slice { shard, total }),
            _ => Err(usage()),
        }
    }

    /// Whether the item at `index` (in list order), named `key`
    /// (`binary test`), belongs to this shard.
    pub(crate) fn takes(self, index: usize, key: &str) -> bool {
        match self {
            Partition::Slice { shard, total } => index as u64 % total + 1 == shard,
            Partition::Hash { shard, total } => fnv1a(key.as_bytes()) % total + 1 == shard,
        }
    }

    /// Keeps this shard's share of `items`, each named by `key`.
    pub(crate) fn select<T>(self, items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
        items
            .into_iter()
            .enumerate()
            .filter(|(index, item)| self.takes(*index, &key(item)))
            .map(|(_, item)| item)
            .collect()
    }
}

/// FNV-1a, 64 bits: stable across runs, machines and versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_test_exactly_once() {
        for kind in ["hash", "slice"] {
            let mut seen: Vec<usize> = Vec::new();
            for shard in 1..=3 {
                let partition = Partition::parse(&format!("{kind}:{shard}/3")).unwrap();
                seen.extend(partition.select((0..50).collect(), |serial| format!("pkg t{serial}")));
            }
            seen.sort_unstable();
            assert_eq!(seen, (0..50).collect::<Vec<_>>(), "{kind}");
        }
    }

    #[test]
    fn bad_partitions_are_refused() {
        for bad in ["hash:0/3", "slice:4/3", "hash:1", "mod:1/2", "hash:a/b"] {
            assert!(Partition::parse(bad).is_err(), "{bad}");
        }
    }
}
