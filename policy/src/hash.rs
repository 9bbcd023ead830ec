//! The one hash every decision uses: fixed (FNV-1a, then a splitmix64 finaliser), so the same request
//! headers give the same bucket on every worker, restart, cluster and build.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Canary buckets: a destination owns a contiguous range of them.
pub const BUCKETS: u32 = 10_000;
/// Fault rolls are in parts per million, so percentages keep four decimals.
pub const ROLL_SPACE: u32 = 1_000_000;

#[derive(Clone, Copy)]
pub struct StableHasher(u64);

impl StableHasher {
    pub fn new() -> Self {
        StableHasher(FNV_OFFSET)
    }
    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }
    /// Writes a field separator so ("ab","c") and ("a","bc") differ.
    pub fn sep(&mut self) -> &mut Self {
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(FNV_PRIME);
        self
    }
    pub fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Hashes `salt`, `scope` and `key` into `0..space`.
pub fn slot(salt: &[u8], scope: &[u8], key: &[u8], space: u32) -> u32 {
    let h = StableHasher::new()
        .write(salt)
        .sep()
        .write(scope)
        .sep()
        .write(key)
        .finish();
    (h % u64::from(space)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_values() {
        // Pinned: changing the hash moves every user between canary and stable. Never change these.
        assert_eq!(
            StableHasher::new().write(b"ksit").finish(),
            0xdabc_9e4f_f238_0744
        );
        assert_eq!(slot(b"ksit-canary", b"api", b"user-1", BUCKETS), 5492);
        assert_ne!(
            slot(b"a", b"bc", b"", 1 << 30),
            slot(b"ab", b"c", b"", 1 << 30)
        );
    }

    #[test]
    fn roughly_uniform() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u32 {
            let k = format!("req-{i}");
            counts[(slot(b"canary", b"api", k.as_bytes(), BUCKETS) / 1000) as usize] += 1;
        }
        for c in counts {
            assert!(
                (9_500..=10_500).contains(&c),
                "bucket decile count {c} far from 10000: {counts:?}"
            );
        }
    }
}
