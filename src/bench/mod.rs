//! Speed, measured: model shapes with seeded weights, seeded workloads, the bench driver, the
//! figures it reports and the regression gate that compares them.
//!
//! Everything here is generated from a seed: the same seed writes byte-identical model files
//! and the same texts, so crossrank and the PyTorch peers (scripts/peers.py) score the same
//! model on the same inputs.

pub mod cli;
pub mod gate;
pub mod images;
pub mod report;
pub mod run;
pub mod run_images;
pub mod shapes;
pub mod shapes_blip;
pub mod shapes_qwen;
pub mod workload;

/// A small seeded generator (SplitMix64): stable across platforms and crate versions, which a
/// benchmark's inputs must be.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator for one named stream: the same (seed, name) always gives the same numbers,
    /// whatever order the streams are drawn in.
    pub fn for_name(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Rng(seed ^ h.rotate_left(17))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_name(7, "x").next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Rng::for_name(7, "x").next_u64(),
            Rng::for_name(7, "y").next_u64()
        );
        assert_ne!(
            Rng::for_name(7, "x").next_u64(),
            Rng::for_name(8, "x").next_u64()
        );
        let mut r = Rng::new(1);
        let mean = (0..10_000).map(|_| r.unit()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut r = Rng::new(2);
        let xs: Vec<f64> = (0..10_000).map(|_| r.normal()).collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(m.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{m} {var}");
    }
}
