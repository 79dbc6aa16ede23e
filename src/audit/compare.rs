//! One query's two rankings compared ([`compare`]), and the whole set's running totals
//! ([`Totals`]): what the report needs, kept small, as the queries stream past.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::input::{Doc, QueryLine};
use super::stats;
use crate::engine::Ranked;

/// What the per-query figures are computed with.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub top_k: usize,
    pub rbo_p: f64,
    /// Movers listed per query, each way.
    pub movers: usize,
}

/// A document's key across queries: its id when the input gives one, else a hash of its text.
pub fn doc_key(doc: &Doc) -> String {
    match &doc.id {
        Some(id) => format!("id:{id}"),
        None => {
            let digest = Sha256::digest(doc.text.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// The first `n` characters of a text, on one line, with `…` when cut.
pub fn preview(text: &str, n: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= n {
        flat
    } else {
        let mut s: String = flat.chars().take(n.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// A document that moved between the two rankings. Ranks are 1-based (1 = best).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mover {
    /// Position in the query's input list (0-based).
    pub index: usize,
    pub key: String,
    pub text: String,
    pub rank_a: usize,
    pub rank_b: usize,
    pub score_a: f32,
    pub score_b: f32,
}

impl Mover {
    /// Ranks gained under model B (negative: lost).
    pub fn gain(&self) -> i64 {
        self.rank_a as i64 - self.rank_b as i64
    }
}

/// Score B - score A over a query's documents.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Shift {
    pub mean: f64,
    pub mean_abs: f64,
    pub max_abs: f64,
}

/// Everything the audit says about one query.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueryAudit {
    pub line: usize,
    pub id: Option<String>,
    pub query: String,
    pub documents: usize,
    /// `null` when fewer than two documents (nothing to compare).
    pub kendall_tau_b: Option<f64>,
    pub spearman_rho: Option<f64>,
    /// Documents in both top-k lists (k cut to the list length).
    pub top_k_overlap: usize,
    /// `top_k_overlap / min(k, documents)`; `null` when fewer than two documents.
    pub top_k_overlap_fraction: Option<f64>,
    pub rbo: Option<f64>,
    pub score_shift: Option<Shift>,
    /// Documents whose score equals another document's, under A and under B: their relative
    /// order is their input order.
    pub tied_a: usize,
    pub tied_b: usize,
    pub movers_up: Vec<Mover>,
    pub movers_down: Vec<Mover>,
    /// Per input document, in input order: rank (1-based) and score under each model.
    pub ranks_a: Vec<usize>,
    pub ranks_b: Vec<usize>,
    pub scores_a: Vec<f32>,
    pub scores_b: Vec<f32>,
}

/// Documents whose score another document of the list shares.
fn tied(ranked: &[Ranked]) -> usize {
    // `ranked` is sorted best first, so equal scores are neighbours.
    (0..ranked.len())
        .filter(|&i| {
            (i > 0 && ranked[i - 1].score == ranked[i].score)
                || (i + 1 < ranked.len() && ranked[i + 1].score == ranked[i].score)
        })
        .count()
}

/// Compares the two rankings of one query: `a` and `b` are `engine::rank`'s output for every
/// document (best first, ties in input order).
pub fn compare(q: &QueryLine, a: &[Ranked], b: &[Ranked], s: &Settings) -> QueryAudit {
    let n = q.docs.len();
    let order_a: Vec<usize> = a.iter().map(|r| r.index).collect();
    let order_b: Vec<usize> = b.iter().map(|r| r.index).collect();
    let (mut ranks_a, mut ranks_b) = (vec![0usize; n], vec![0usize; n]);
    let (mut scores_a, mut scores_b) = (vec![0f32; n], vec![0f32; n]);
    for (pos, r) in a.iter().enumerate() {
        ranks_a[r.index] = pos + 1;
        scores_a[r.index] = r.score;
    }
    for (pos, r) in b.iter().enumerate() {
        ranks_b[r.index] = pos + 1;
        scores_b[r.index] = r.score;
    }
    let fa: Vec<f64> = ranks_a.iter().map(|&r| r as f64).collect();
    let fb: Vec<f64> = ranks_b.iter().map(|&r| r as f64).collect();
    let overlap = stats::top_k_overlap(&order_a, &order_b, s.top_k);
    let kk = s.top_k.min(n);

    let shifts: Vec<f64> = (0..n)
        .map(|i| scores_b[i] as f64 - scores_a[i] as f64)
        .filter(|d| d.is_finite())
        .collect();
    let score_shift = (!shifts.is_empty()).then(|| Shift {
        mean: shifts.iter().sum::<f64>() / shifts.len() as f64,
        mean_abs: shifts.iter().map(|d| d.abs()).sum::<f64>() / shifts.len() as f64,
        max_abs: shifts.iter().fold(0.0, |m, d| m.max(d.abs())),
    });

    let mover = |i: usize| Mover {
        index: i,
        key: doc_key(&q.docs[i]),
        text: preview(&q.docs[i].text, 80),
        rank_a: ranks_a[i],
        rank_b: ranks_b[i],
        score_a: scores_a[i],
        score_b: scores_b[i],
    };
    let gain = |i: usize| ranks_a[i] as i64 - ranks_b[i] as i64;
    let mut by_gain: Vec<usize> = (0..n).collect();
    // Biggest gain first; equal gains in input order.
    by_gain.sort_by_key(|&i| (-gain(i), i));
    let movers_up = by_gain
        .iter()
        .filter(|&&i| gain(i) > 0)
        .take(s.movers)
        .map(|&i| mover(i))
        .collect();
    by_gain.sort_by_key(|&i| (gain(i), i));
    let movers_down = by_gain
        .iter()
        .filter(|&&i| gain(i) < 0)
        .take(s.movers)
        .map(|&i| mover(i))
        .collect();

    QueryAudit {
        line: q.line,
        id: q.id.clone(),
        query: q.query.clone(),
        documents: n,
        kendall_tau_b: stats::kendall_tau_b(&fa, &fb),
        spearman_rho: stats::spearman_rho(&fa, &fb),
        top_k_overlap: overlap,
        top_k_overlap_fraction: (n >= 2).then(|| overlap as f64 / kk as f64),
        rbo: if n >= 2 {
            stats::rbo_ext(&order_a, &order_b, s.rbo_p)
        } else {
            None
        },
        score_shift,
        tied_a: tied(a),
        tied_b: tied(b),
        movers_up,
        movers_down,
        ranks_a,
        ranks_b,
        scores_a,
        scores_b,
    }
}

/// A query in the most-changed table: its figures without its documents.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueryBrief {
    pub line: usize,
    pub id: Option<String>,
    pub query: String,
    pub documents: usize,
    pub kendall_tau_b: f64,
    pub spearman_rho: Option<f64>,
    pub top_k_overlap_fraction: Option<f64>,
    pub rbo: Option<f64>,
    pub movers_up: Vec<Mover>,
    pub movers_down: Vec<Mover>,
}

/// One document's moves over every query it appears in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DocTrend {
    pub key: String,
    pub text: String,
    pub queries: usize,
    /// Queries where it ranked better under B / worse under B.
    pub rose: usize,
    pub fell: usize,
    /// Mean of rank A - rank B over its queries (positive: rose).
    pub mean_gain: f64,
    /// Mean of score B - score A.
    pub mean_score_shift: f64,
}

#[derive(Debug, Clone, Default)]
struct DocTally {
    text: String,
    queries: usize,
    rose: usize,
    fell: usize,
    gain: i64,
    shift: f64,
}

/// The whole set's running totals: per-query figures (a few numbers each), the most changed
/// queries, per-document tallies, and the rank-before-vs-after grid of the scatter chart.
#[derive(Debug, Clone)]
pub struct Totals {
    pub queries: usize,
    pub pairs: usize,
    /// Queries with no documents, and with exactly one: (line, id).
    pub empty: Vec<(usize, Option<String>)>,
    pub single: Vec<(usize, Option<String>)>,
    pub tau: Vec<f64>,
    pub rho: Vec<f64>,
    pub overlap: Vec<f64>,
    pub rbo: Vec<f64>,
    pub mean_abs_shift: Vec<f64>,
    /// Queries whose two orders are the same.
    pub unchanged: usize,
    /// Every query with a tau; the report shows the lowest. A brief is a few hundred bytes.
    keep_most_changed: usize,
    most_changed: Vec<QueryBrief>,
    docs: HashMap<String, DocTally>,
    /// `grid[(a - 1) * cap + (b - 1)]`: documents at rank a under A and b under B, ranks past
    /// `cap` counted at `cap`.
    pub grid_cap: usize,
    pub grid: Vec<u64>,
}

impl Totals {
    /// `grid_cap`: the largest rank the scatter shows on its own (at least 1).
    pub fn new(grid_cap: usize, keep_most_changed: usize) -> Self {
        let cap = grid_cap.max(1);
        Totals {
            queries: 0,
            pairs: 0,
            empty: Vec::new(),
            single: Vec::new(),
            tau: Vec::new(),
            rho: Vec::new(),
            overlap: Vec::new(),
            rbo: Vec::new(),
            mean_abs_shift: Vec::new(),
            unchanged: 0,
            keep_most_changed,
            most_changed: Vec::new(),
            docs: HashMap::new(),
            grid_cap: cap,
            grid: vec![0; cap * cap],
        }
    }

    pub fn add(&mut self, q: &QueryLine, audit: &QueryAudit) {
        self.queries += 1;
        self.pairs += audit.documents;
        match audit.documents {
            0 => self.empty.push((audit.line, audit.id.clone())),
            1 => self.single.push((audit.line, audit.id.clone())),
            _ => {}
        }
        let push = |v: &mut Vec<f64>, x: Option<f64>| v.extend(x.filter(|x| x.is_finite()));
        push(&mut self.tau, audit.kendall_tau_b);
        push(&mut self.rho, audit.spearman_rho);
        push(&mut self.overlap, audit.top_k_overlap_fraction);
        push(&mut self.rbo, audit.rbo);
        push(
            &mut self.mean_abs_shift,
            audit.score_shift.map(|s| s.mean_abs),
        );
        if audit.documents >= 2 && audit.ranks_a == audit.ranks_b {
            self.unchanged += 1;
        }
        if let Some(tau) = audit.kendall_tau_b {
            self.most_changed.push(QueryBrief {
                line: audit.line,
                id: audit.id.clone(),
                query: preview(&audit.query, 80),
                documents: audit.documents,
                kendall_tau_b: tau,
                spearman_rho: audit.spearman_rho,
                top_k_overlap_fraction: audit.top_k_overlap_fraction,
                rbo: audit.rbo,
                movers_up: audit.movers_up.clone(),
                movers_down: audit.movers_down.clone(),
            });
            // Keep the list bounded: sort and cut whenever it doubles.
            if self.most_changed.len() >= 2 * self.keep_most_changed.max(1) {
                self.cut_most_changed();
            }
        }
        let cap = self.grid_cap;
        for (i, doc) in q.docs.iter().enumerate() {
            let (ra, rb) = (audit.ranks_a[i], audit.ranks_b[i]);
            self.grid[(ra.min(cap) - 1) * cap + (rb.min(cap) - 1)] += 1;
            if audit.documents < 2 {
                continue;
            }
            let t = self.docs.entry(doc_key(doc)).or_default();
            if t.queries == 0 {
                t.text = preview(&doc.text, 60);
            }
            t.queries += 1;
            let gain = ra as i64 - rb as i64;
            t.gain += gain;
            if gain > 0 {
                t.rose += 1;
            } else if gain < 0 {
                t.fell += 1;
            }
            let d = audit.scores_b[i] as f64 - audit.scores_a[i] as f64;
            if d.is_finite() {
                t.shift += d;
            }
        }
    }

    fn cut_most_changed(&mut self) {
        // Lowest tau first, then lowest RBO, then file order.
        self.most_changed.sort_by(|x, y| {
            x.kendall_tau_b
                .total_cmp(&y.kendall_tau_b)
                .then(x.rbo.unwrap_or(1.0).total_cmp(&y.rbo.unwrap_or(1.0)))
                .then(x.line.cmp(&y.line))
        });
        self.most_changed.truncate(self.keep_most_changed);
    }

    /// The queries that changed most, most changed first (those whose order did not change are
    /// left out).
    pub fn most_changed(&mut self) -> Vec<QueryBrief> {
        self.cut_most_changed();
        self.most_changed
            .iter()
            .filter(|q| q.kendall_tau_b < 1.0)
            .cloned()
            .collect()
    }

    /// Documents seen in at least `min_queries` queries, as (rising, falling): those that rose
    /// in more queries than they fell, most net rises first, and the reverse; `limit` each.
    pub fn trends(&self, min_queries: usize, limit: usize) -> (Vec<DocTrend>, Vec<DocTrend>) {
        let mut all: Vec<DocTrend> = self
            .docs
            .iter()
            .filter(|(_, t)| t.queries >= min_queries.max(1))
            .map(|(k, t)| DocTrend {
                key: k.clone(),
                text: t.text.clone(),
                queries: t.queries,
                rose: t.rose,
                fell: t.fell,
                mean_gain: t.gain as f64 / t.queries as f64,
                mean_score_shift: t.shift / t.queries as f64,
            })
            .collect();
        let net = |t: &DocTrend| t.rose as i64 - t.fell as i64;
        all.sort_by(|x, y| {
            net(y)
                .cmp(&net(x))
                .then(y.mean_gain.total_cmp(&x.mean_gain))
                .then(x.key.cmp(&y.key))
        });
        let rising: Vec<DocTrend> = all
            .iter()
            .filter(|t| net(t) > 0)
            .take(limit)
            .cloned()
            .collect();
        let falling: Vec<DocTrend> = all
            .iter()
            .rev()
            .filter(|t| net(t) < 0)
            .take(limit)
            .cloned()
            .collect();
        (rising, falling)
    }

    /// Distinct documents seen in queries of two or more documents.
    pub fn distinct_docs(&self) -> usize {
        self.docs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(order: &[usize], scores: &[f32]) -> Vec<Ranked> {
        order
            .iter()
            .map(|&i| Ranked {
                index: i,
                score: scores[i],
                truncated: false,
            })
            .collect()
    }

    fn line(docs: &[&str]) -> QueryLine {
        QueryLine {
            line: 3,
            id: Some("q".into()),
            query: "query".into(),
            docs: docs
                .iter()
                .map(|t| Doc {
                    text: t.to_string(),
                    id: None,
                })
                .collect(),
        }
    }

    const S: Settings = Settings {
        top_k: 2,
        rbo_p: 0.9,
        movers: 5,
    };

    /// Four documents; A orders them 0 1 2 3, B orders them 2 0 1 3: document 2 rises from 3 to
    /// 1, documents 0 and 1 each fall one place. By hand: pairs (0,2) and (1,2) discordant, 4
    /// concordant: tau = 2/6; d² = 1 + 1 + 4 = 6: rho = 1 - 36/60 = 0.4; top-2 {0,1} vs {2,0}
    /// share 1 of 2.
    #[test]
    fn one_query_by_hand() {
        let q = line(&["a", "b", "c", "d"]);
        let sa = [0.9, 0.8, 0.7, 0.1];
        let sb = [0.6, 0.5, 0.95, 0.2];
        let a = ranked(&[0, 1, 2, 3], &sa);
        let b = ranked(&[2, 0, 1, 3], &sb);
        let r = compare(&q, &a, &b, &S);
        assert_eq!(r.ranks_a, vec![1, 2, 3, 4]);
        assert_eq!(r.ranks_b, vec![2, 3, 1, 4]);
        assert!((r.kendall_tau_b.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.spearman_rho.unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(r.top_k_overlap, 1);
        assert_eq!(r.top_k_overlap_fraction, Some(0.5));
        assert_eq!(r.movers_up.len(), 1);
        assert_eq!(
            (
                r.movers_up[0].index,
                r.movers_up[0].rank_a,
                r.movers_up[0].rank_b
            ),
            (2, 3, 1)
        );
        let down: Vec<usize> = r.movers_down.iter().map(|m| m.index).collect();
        assert_eq!(down, vec![0, 1], "equal losses in input order");
        let shift = r.score_shift.unwrap();
        // B - A: -0.3 -0.3 +0.25 +0.1.
        assert!((shift.mean - (-0.25 / 4.0)).abs() < 1e-6, "{shift:?}");
        assert!((shift.mean_abs - 0.95 / 4.0).abs() < 1e-6, "{shift:?}");
        assert!((shift.max_abs - 0.3).abs() < 1e-6, "{shift:?}");
        assert_eq!((r.tied_a, r.tied_b), (0, 0));
    }

    #[test]
    fn empty_and_single_queries_have_no_figures() {
        let r = compare(&line(&[]), &[], &[], &S);
        assert_eq!(r.documents, 0);
        assert!(r.kendall_tau_b.is_none() && r.rbo.is_none() && r.score_shift.is_none());
        let one = line(&["x"]);
        let a = ranked(&[0], &[0.5]);
        let r1 = compare(&one, &a, &a, &S);
        assert!(
            r1.kendall_tau_b.is_none() && r1.rbo.is_none() && r1.top_k_overlap_fraction.is_none()
        );
        let mut t = Totals::new(10, 5);
        t.add(&line(&[]), &r);
        t.add(&one, &r1);
        assert_eq!(t.empty, vec![(3, Some("q".to_string()))]);
        assert_eq!(t.single.len(), 1);
        assert!(t.tau.is_empty());
        assert_eq!(t.grid[0], 1);
    }

    #[test]
    fn ties_are_counted() {
        let q = line(&["a", "a", "b"]);
        let s = [0.5, 0.5, 0.1];
        let a = ranked(&[0, 1, 2], &s);
        let r = compare(&q, &a, &a, &S);
        assert_eq!((r.tied_a, r.tied_b), (2, 2));
        assert_eq!(r.kendall_tau_b, Some(1.0));
    }

    /// A document keyed by text rises in two queries and falls in one: net +1, rising.
    #[test]
    fn trends_follow_documents_across_queries() {
        let mut t = Totals::new(4, 5);
        let q = line(&["up", "other"]);
        let a = ranked(&[1, 0], &[0.1, 0.9]);
        let b = ranked(&[0, 1], &[0.9, 0.1]);
        let rose = compare(&q, &a, &b, &S);
        t.add(&q, &rose);
        t.add(&q, &rose);
        let fell = compare(&q, &b, &a, &S);
        t.add(&q, &fell);
        // Unmoved: counts as a query, neither a rise nor a fall.
        let still = compare(&q, &a, &a, &S);
        t.add(&q, &still);
        let (rising, falling) = t.trends(2, 10);
        assert_eq!(rising.len(), 1);
        assert_eq!(rising[0].key, doc_key(&q.docs[0]));
        assert_eq!(
            (rising[0].queries, rising[0].rose, rising[0].fell),
            (4, 2, 1)
        );
        assert!((rising[0].mean_gain - 1.0 / 4.0).abs() < 1e-12);
        assert_eq!(falling.len(), 1);
        assert_eq!(falling[0].text, "other");
        // The unmoved query (tau 1) is not among the most changed.
        let most = t.most_changed();
        assert_eq!(most.len(), 3);
        assert!(most.iter().all(|m| m.kendall_tau_b == -1.0));
        assert_eq!(t.unchanged, 1);
    }

    #[test]
    fn doc_keys_prefer_ids() {
        let with_id = Doc {
            text: "x".into(),
            id: Some("d1".into()),
        };
        assert_eq!(doc_key(&with_id), "id:d1");
        let plain = Doc {
            text: "x".into(),
            id: None,
        };
        // sha256("x") = 2d711642b726b044...
        assert_eq!(doc_key(&plain), "sha256:2d711642b726b044");
        assert_eq!(preview("a\nb", 10), "a b");
        assert_eq!(preview("abcdef", 4), "abc…");
    }
}
