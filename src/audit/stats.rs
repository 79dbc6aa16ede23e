//! The rank-agreement statistics of an audit, on two rankings of the same documents.
//!
//! A ranking here is `ranks[i]`: the 0-based position of input document `i` in a model's order
//! (best first). Both rankings come from `engine::rank`, which breaks equal scores by input
//! order, so each is a permutation of `0..n`; the statistics below still take ties into account
//! (tau-b, average ranks) so that they stay right on any input.
//!
//! Plain O(n²) loops on purpose: candidate lists are hundreds of documents, and the obvious code
//! is the one to trust.

/// Kendall's tau-b between two score (or rank) vectors of equal length:
/// `(nc - nd) / sqrt((n0 - n1) (n0 - n2))`, where n0 = n(n-1)/2 pairs, nc / nd the concordant /
/// discordant pairs, n1 / n2 the pairs tied in `x` / in `y`. Equals tau-a when there are no
/// ties. `None` when undefined: fewer than 2 items, or every pair tied in one of the vectors.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    let (mut nc, mut nd, mut tx, mut ty) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i] - x[j];
            let dy = y[i] - y[j];
            if dx == 0.0 {
                tx += 1;
            }
            if dy == 0.0 {
                ty += 1;
            }
            if dx != 0.0 && dy != 0.0 {
                if (dx > 0.0) == (dy > 0.0) {
                    nc += 1;
                } else {
                    nd += 1;
                }
            }
        }
    }
    let n0 = (n as u64) * (n as u64).saturating_sub(1) / 2;
    let denom = ((n0 - tx) as f64 * (n0 - ty) as f64).sqrt();
    if denom == 0.0 {
        return None;
    }
    Some((nc as f64 - nd as f64) / denom)
}

/// Average ranks (1-based; tied values share the mean of the positions they span).
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) share the rank ((i+1) + (j+1)) / 2.
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = r;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rho: Pearson's correlation of the average ranks. `None` when undefined (fewer
/// than 2 items, or one vector constant).
pub fn spearman_rho(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    pearson(&average_ranks(&x[..n]), &average_ranks(&y[..n]))
}

/// Pearson's correlation; `None` when a vector has no variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let mx = x[..n].iter().sum::<f64>() / n as f64;
    let my = y[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Documents in both top-k lists. `order_a` / `order_b` are input indices, best first; k is cut
/// to the list length.
pub fn top_k_overlap(order_a: &[usize], order_b: &[usize], k: usize) -> usize {
    let k = k.min(order_a.len()).min(order_b.len());
    let top_b = &order_b[..k];
    order_a[..k].iter().filter(|i| top_b.contains(i)).count()
}

/// Rank-biased overlap, extrapolated (Webber, Moffat & Zobel 2010, eq. 32) over the full depth
/// `k` of the two lists: `RBO_ext = (X_k / k) p^k + (1-p)/p * sum_{d=1..k} (X_d / d) p^d`,
/// where X_d counts the items shared by the two top-d prefixes. For two orders of the same k
/// items X_k = k, so identical orders give exactly 1. Persistence `p` in (0, 1): the top d
/// ranks weigh more as p falls (Webber et al.: at p = 0.9 the top 10 carry 86% of the weight).
/// `None` for empty lists.
pub fn rbo_ext(order_a: &[usize], order_b: &[usize], p: f64) -> Option<f64> {
    let k = order_a.len().min(order_b.len());
    if k == 0 {
        return None;
    }
    let n = order_a.iter().chain(order_b).copied().max().unwrap_or(0) + 1;
    let (mut seen_a, mut seen_b) = (vec![false; n], vec![false; n]);
    let mut shared = 0usize;
    let mut sum = 0.0;
    let mut weight = 1.0;
    for d in 1..=k {
        let (a, b) = (order_a[d - 1], order_b[d - 1]);
        if a == b {
            shared += 1;
        } else {
            if seen_b[a] {
                shared += 1;
            }
            if seen_a[b] {
                shared += 1;
            }
        }
        seen_a[a] = true;
        seen_b[b] = true;
        weight *= p;
        sum += shared as f64 / d as f64 * weight;
    }
    Some(shared as f64 / k as f64 * weight + (1.0 - p) / p * sum)
}

/// Order statistics of a set of values, NaN-free.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub p10: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub p90: f64,
    pub max: f64,
}

/// The summary of `values` (None when empty). Quantiles interpolate linearly between the two
/// nearest order statistics (numpy's default, "linear").
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let h = (v.len() - 1) as f64 * p;
        let lo = h.floor() as usize;
        let hi = h.ceil() as usize;
        v[lo] + (v[hi] - v[lo]) * (h - lo as f64)
    };
    Some(Summary {
        count: v.len(),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        min: v[0],
        p10: q(0.10),
        p25: q(0.25),
        median: q(0.5),
        p75: q(0.75),
        p90: q(0.90),
        max: v[v.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn f(v: &[usize]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }

    /// Hand-computed: swapping the first two of three gives 1 discordant pair of 3:
    /// tau = (2 - 1) / 3; rho = 1 - 6 * (1 + 1) / (3 * 8) = 1/2.
    #[test]
    fn tau_and_rho_of_one_swap_in_three() {
        let (a, b) = (f(&[0, 1, 2]), f(&[1, 0, 2]));
        assert!(close(kendall_tau_b(&a, &b).unwrap(), 1.0 / 3.0));
        assert!(close(spearman_rho(&a, &b).unwrap(), 0.5));
    }

    /// Hand-computed on five items: ranks a = 0 1 2 3 4, b = 2 0 1 4 3. Pairs (10): discordant
    /// (0,1) (0,2) (3,4) = 3, concordant 7: tau = 4/10. d = 2,-1,-1,1,-1, sum d² = 8:
    /// rho = 1 - 6*8 / (5*24) = 0.6. Reversed order: tau = -1, rho = -1.
    #[test]
    fn tau_and_rho_on_five_and_reversed() {
        let a = f(&[0, 1, 2, 3, 4]);
        let b = f(&[2, 0, 1, 4, 3]);
        assert!(close(kendall_tau_b(&a, &b).unwrap(), 0.4));
        assert!(close(spearman_rho(&a, &b).unwrap(), 0.6));
        let r = f(&[4, 3, 2, 1, 0]);
        assert!(close(kendall_tau_b(&a, &r).unwrap(), -1.0));
        assert!(close(spearman_rho(&a, &r).unwrap(), -1.0));
        assert!(close(kendall_tau_b(&a, &a).unwrap(), 1.0));
        assert!(close(spearman_rho(&b, &b).unwrap(), 1.0));
    }

    /// Ties, by hand: x = 1 2 2 3, y = 1 2 3 3. Six pairs: (0,1) (0,2) (0,3) (1,3) concordant,
    /// (1,2) tied in x only, (2,3) tied in y only: nc = 4, nd = 0, n1 = n2 = 1:
    /// tau-b = 4 / sqrt(5 * 5) = 0.8 (tau-a would be 4/6).
    /// rho: average ranks x = 1 2.5 2.5 4, y = 1 2 3.5 3.5; centred (mean 2.5)
    /// x' = -1.5 0 0 1.5, y' = -1.5 -0.5 1 1; sxy = 2.25 + 1.5 = 3.75, sxx = 4.5, syy = 4.5:
    /// rho = 3.75 / 4.5 = 5/6.
    #[test]
    fn tau_b_and_rho_with_ties() {
        let x = [1.0, 2.0, 2.0, 3.0];
        let y = [1.0, 2.0, 3.0, 3.0];
        assert!(close(kendall_tau_b(&x, &y).unwrap(), 0.8));
        assert_eq!(average_ranks(&x), vec![1.0, 2.5, 2.5, 4.0]);
        assert!(close(spearman_rho(&x, &y).unwrap(), 5.0 / 6.0));
    }

    /// A pair tied in both vectors counts in both n1 and n2: x = 1 1 2, y = 1 1 3 has pair
    /// (0,1) tied in both, two concordant: tau-b = 2 / sqrt((3 - 1) (3 - 1)) = 1.
    #[test]
    fn a_pair_tied_in_both_counts_in_both() {
        assert!(close(
            kendall_tau_b(&[1.0, 1.0, 2.0], &[1.0, 1.0, 3.0]).unwrap(),
            1.0
        ));
    }

    #[test]
    fn undefined_cases_are_none() {
        assert_eq!(kendall_tau_b(&[], &[]), None);
        assert_eq!(kendall_tau_b(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau_b(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(spearman_rho(&[1.0], &[2.0]), None);
        assert_eq!(spearman_rho(&[3.0, 3.0, 3.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(rbo_ext(&[], &[], 0.9), None);
        assert_eq!(summarize(&[]), None);
    }

    /// Hand-computed at p = 0.9: a = (0 1 2), b = (1 0 2): X = 0, 2, 3;
    /// RBO = 1 * 0.9³ + (0.1/0.9) (0 * 0.9 + 1 * 0.81 + 1 * 0.729) = 0.729 + 0.171 = 0.9.
    /// a = (0 1 2 3), b = (3 2 1 0): X = 0, 0, 2, 4 (X_3: {0,1,2} and {3,2,1} share 2);
    /// RBO = 0.9⁴ + (1/9)(2/3 * 0.729 + 1 * 0.6561) = 0.6561 + 0.1269 = 0.783.
    #[test]
    fn rbo_by_hand() {
        assert!(close(rbo_ext(&[0, 1, 2], &[1, 0, 2], 0.9).unwrap(), 0.9));
        assert!(close(
            rbo_ext(&[0, 1, 2, 3], &[3, 2, 1, 0], 0.9).unwrap(),
            0.783
        ));
        for p in [0.5, 0.9, 0.98] {
            assert!(close(
                rbo_ext(&[4, 2, 0, 1, 3], &[4, 2, 0, 1, 3], p).unwrap(),
                1.0
            ));
        }
        // One item: it is shared, weight p + (1-p)/p * p = 1.
        assert!(close(rbo_ext(&[0], &[0], 0.9).unwrap(), 1.0));
    }

    #[test]
    fn top_k_overlap_counts_shared_items() {
        assert_eq!(top_k_overlap(&[0, 1, 2, 3], &[1, 0, 3, 2], 2), 2);
        assert_eq!(top_k_overlap(&[0, 1, 2, 3], &[2, 3, 0, 1], 2), 0);
        assert_eq!(top_k_overlap(&[0, 1, 2, 3], &[0, 2, 1, 3], 2), 1);
        // k beyond the list is cut to it.
        assert_eq!(top_k_overlap(&[0, 1], &[1, 0], 10), 2);
    }

    /// numpy.percentile([1, 2, 3, 4, 10], [10, 25, 50, 75, 90]) = 1.4 2 3 4 7.6.
    #[test]
    fn summary_quantiles_interpolate_like_numpy() {
        let s = summarize(&[10.0, 2.0, 4.0, 1.0, 3.0]).unwrap();
        assert_eq!(s.count, 5);
        assert!(close(s.mean, 4.0));
        assert_eq!((s.min, s.max), (1.0, 10.0));
        assert!(close(s.p10, 1.4));
        assert!(close(s.p25, 2.0));
        assert!(close(s.median, 3.0));
        assert!(close(s.p75, 4.0));
        assert!(close(s.p90, 7.6));
    }
}
