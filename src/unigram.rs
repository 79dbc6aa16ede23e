//! A fast path for XLM-R's SentencePiece Unigram tokenizers: the same ids as the `tokenizers`
//! library's Precompiled normalizer + WhitespaceSplit + Metaspace + Unigram, without the
//! alignments, per-piece strings, trie-walk allocations and locked cache that library pays for.
//!
//! It is a twin, not an approximation. Normalization calls the library's own
//! `Precompiled::transform` over the same grapheme clusters (the `unicode-segmentation` crate
//! `tokenizers` itself uses), with one shortcut: a cut between two ASCII characters that are not
//! CR LF is always a grapheme boundary, whatever surrounds it (see `normalize`), so the text is
//! cut there and its pure-ASCII stretches go through a table made with `transform` at load. The
//! pre-tokenizer splits exactly as the library's does, and the Viterbi search is the library's
//! `encode_optimized` step for step (candidates in increasing length, strict `>`, the unknown
//! score `min_score - 10` for a character with no piece, unknowns fused and looked up again),
//! over a compact byte trie of every vocabulary piece. It applies only when tokenizer.json has
//! exactly such a pipeline, and a text holding an added token (`<s>`, `<mask>`...) goes the
//! general way. tests/unigram.rs checks it against the library on seeded random multilingual
//! text.

use serde::Deserialize;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{Model, ModelWrapper, Tokenizer};
use unicode_segmentation::UnicodeSegmentation;

/// models/unigram/model.rs: an unknown character scores this much below the worst piece.
const K_UNK_PENALTY: f64 = 10.0;
/// No trie node / no best path yet.
const NONE: u32 = u32::MAX;

pub struct FastUnigram {
    precompiled: Precompiled,
    /// What each ASCII character normalizes to: `transform` of it, or itself when unmapped.
    ascii: Vec<String>,
    /// ASCII characters that normalize to themselves (never CR: it may pair with LF).
    keep: [bool; 128],
    /// What the grapheme "\r\n" normalizes to.
    crlf: String,
    /// WhitespaceSplit comes before Metaspace (else the whole text is one Metaspace input).
    whitespace_split: bool,
    replacement: char,
    prepend: bool,
    split: bool,
    trie: Trie,
    unk: u32,
    unk_score: f64,
    /// Contents of the added tokens, matched on the raw text.
    added: Vec<String>,
    /// First bytes of `added`.
    added_first: [bool; 256],
}

/// The part of the Unigram model's serialization that has no public getter.
#[derive(Deserialize)]
struct UnigramHead {
    unk_id: Option<usize>,
    byte_fallback: bool,
}

impl FastUnigram {
    /// The fast path for this tokenizer, or `None` when its pipeline is not one this module
    /// reproduces exactly.
    pub fn new(t: &Tokenizer) -> Option<Self> {
        let Some(NormalizerWrapper::Precompiled(precompiled)) = t.get_normalizer() else {
            return None;
        };
        let (whitespace_split, metaspace) = match t.get_pre_tokenizer()? {
            PreTokenizerWrapper::Metaspace(m) => (false, m),
            PreTokenizerWrapper::Sequence(seq) => match seq.as_ref() {
                [PreTokenizerWrapper::WhitespaceSplit(_), PreTokenizerWrapper::Metaspace(m)] => {
                    (true, m)
                }
                _ => return None,
            },
            _ => return None,
        };
        let prepend = prepend_of(metaspace)?;
        let ModelWrapper::Unigram(model) = t.get_model() else {
            return None;
        };
        let head = unigram_head(model)?;
        if head.byte_fallback {
            return None;
        }
        // Without an unknown id the library fails on an unknown character: not ours to copy.
        let unk = u32::try_from(head.unk_id?).ok()?;

        let mut added = Vec::new();
        let mut added_first = [false; 256];
        for token in t.get_added_tokens_decoder().values() {
            // Normalized added tokens are matched after normalization, on the normalized text:
            // XLM-R has none, and this module does not look for them.
            if token.normalized {
                return None;
            }
            let &first = token.content.as_bytes().first()?;
            added_first[first as usize] = true;
            added.push(token.content.clone());
        }

        let mut ascii = Vec::with_capacity(128);
        let mut keep = [false; 128];
        for b in 0u8..128 {
            let c = (b as char).to_string();
            let out = precompiled.transform(&c).unwrap_or(&c).to_string();
            keep[b as usize] = b != b'\r' && out == c;
            ascii.push(out);
        }
        // The one ASCII grapheme of two characters, looked up whole first as the library does.
        let crlf = match precompiled.transform("\r\n") {
            Some(s) => s.to_string(),
            None => format!("{}{}", ascii[b'\r' as usize], ascii[b'\n' as usize]),
        };

        if unk as usize >= model.get_vocab_size() {
            return None;
        }
        let trie = Trie::build(model.iter().map(|(p, s)| (p.as_bytes(), *s)))?;
        Some(FastUnigram {
            precompiled: precompiled.clone(),
            ascii,
            keep,
            crlf,
            whitespace_split,
            replacement: metaspace.get_replacement(),
            prepend,
            split: metaspace.get_split(),
            trie,
            unk,
            unk_score: model.min_score - K_UNK_PENALTY,
            added,
            added_first,
        })
    }

    /// The ids of `text` without special tokens, or `None` if the text must take the general
    /// path (it holds an added token).
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        if self.holds_added_token(text) {
            return None;
        }
        let mut norm = String::with_capacity(text.len() + 16);
        self.normalize(text, &mut norm);
        // Positions are kept as u32 (half the Viterbi table): a longer text goes the general way.
        if norm.len() >= (u32::MAX - 8) as usize {
            return None;
        }
        let mut ids = Vec::with_capacity(norm.len() / 4 + 1);
        let mut viterbi = Vec::new();
        let mut scratch = String::new();
        if self.whitespace_split {
            for word in norm.split(char::is_whitespace).filter(|w| !w.is_empty()) {
                self.metaspace(word, &mut scratch, &mut viterbi, &mut ids);
            }
        } else if !norm.is_empty() {
            // Metaspace alone: the whole text is its input, spaces (U+0020 only) replaced.
            let mut rep = [0u8; 4];
            let text = norm.replace(' ', self.replacement.encode_utf8(&mut rep));
            self.metaspace(&text, &mut scratch, &mut viterbi, &mut ids);
        }
        Some(ids)
    }

    /// Whether an added token's content occurs in `text`: the library would split it out.
    fn holds_added_token(&self, text: &str) -> bool {
        let b = text.as_bytes();
        b.iter().enumerate().any(|(i, &x)| {
            self.added_first[x as usize]
                && self.added.iter().any(|a| b[i..].starts_with(a.as_bytes()))
        })
    }

    /// The Precompiled normalizer: over grapheme clusters, one shorter than 6 bytes is first
    /// looked up whole; otherwise (or when that fails) each character is looked up, and an
    /// unmapped character stays.
    ///
    /// Grapheme rules (UAX #29) never join two ASCII characters other than CR LF: no ASCII
    /// character is Extend, ZWJ, SpacingMark, Prepend, Regional_Indicator, Hangul,
    /// Extended_Pictographic or an Indic conjunct letter, so only GB3 (CR × LF) can hold
    /// between them, and every rule that looks back (GB9c, GB11, GB12/13) stops at an ASCII
    /// character. So a cut between two such ASCII characters is a boundary in any context, and
    /// the pieces between cuts segment alone exactly as inside the whole text. The pieces
    /// without non-ASCII are single characters (or CR LF): the table. The others go through
    /// `graphemes`, starting one character early since an ASCII character can begin a cluster
    /// (`e` + U+0301) and ending one late since a non-ASCII one can join the next (a Prepend).
    fn normalize(&self, text: &str, out: &mut String) {
        let b = text.as_bytes();
        let n = b.len();
        let mut i = 0;
        while i < n {
            // [i, j): ASCII; i is 0 or a cut.
            let j = b[i..].iter().position(|&x| x >= 0x80).map_or(n, |p| i + p);
            // [i, k) by table; the last ASCII character (with its CR if it is LF of CR LF)
            // starts the non-ASCII piece.
            let mut k = j;
            if j < n && j > i {
                k = j - 1;
                if k > i && b[k] == b'\n' && b[k - 1] == b'\r' {
                    k -= 1;
                }
            }
            self.ascii_run(&text[i..k], out);
            if j == n {
                return;
            }
            // The piece ends at the first cut after j: between two ASCII characters, not CR LF.
            let mut p = j;
            let e = loop {
                if p + 1 >= n {
                    break n;
                }
                if b[p] < 0x80 && b[p + 1] < 0x80 && !(b[p] == b'\r' && b[p + 1] == b'\n') {
                    break p + 1;
                }
                p += 1;
            };
            self.graphemes(&text[k..e], out);
            i = e;
        }
    }

    /// ASCII text, whose graphemes are single characters and CR LF.
    fn ascii_run(&self, run: &str, out: &mut String) {
        let b = run.as_bytes();
        let mut kept = 0;
        let mut p = 0;
        while p < b.len() {
            let c = b[p] as usize;
            if self.keep[c] {
                p += 1;
                continue;
            }
            out.push_str(&run[kept..p]);
            if c == b'\r' as usize && b.get(p + 1) == Some(&b'\n') {
                out.push_str(&self.crlf);
                p += 2;
            } else {
                out.push_str(&self.ascii[c]);
                p += 1;
            }
            kept = p;
        }
        out.push_str(&run[kept..]);
    }

    /// normalizers/precompiled.rs, grapheme by grapheme.
    fn graphemes(&self, piece: &str, out: &mut String) {
        for g in piece.graphemes(true) {
            if g.len() == 1 {
                out.push_str(&self.ascii[g.as_bytes()[0] as usize]);
                continue;
            }
            if g.len() < 6 {
                if let Some(norm) = self.precompiled.transform(g) {
                    out.push_str(norm);
                    continue;
                }
            }
            let mut chars = g.char_indices().peekable();
            while let Some((at, c)) = chars.next() {
                let end = chars.peek().map_or(g.len(), |&(e, _)| e);
                match self.precompiled.transform(&g[at..end]) {
                    Some(norm) => out.push_str(norm),
                    None => out.push(c),
                }
            }
        }
    }

    /// Metaspace on one pre-token (no whitespace when WhitespaceSplit ran): prepend the
    /// replacement unless it starts with one, then cut before every replacement
    /// (MergedWithNext), and run the model on each part.
    fn metaspace(
        &self,
        word: &str,
        scratch: &mut String,
        viterbi: &mut Vec<Best>,
        ids: &mut Vec<u32>,
    ) {
        let rep = self.replacement;
        let mut rest = word;
        if self.prepend && !word.starts_with(rep) {
            // The prepended replacement and the text up to the next one form the first part.
            let first = if self.split {
                word.char_indices()
                    .find(|&(_, c)| c == rep)
                    .map_or(word.len(), |(at, _)| at)
            } else {
                word.len()
            };
            scratch.clear();
            scratch.push(rep);
            scratch.push_str(&word[..first]);
            self.viterbi(scratch, viterbi, ids);
            rest = &word[first..];
        }
        if !self.split {
            if !rest.is_empty() {
                self.viterbi(rest, viterbi, ids);
            }
            return;
        }
        let mut start = 0;
        for (at, c) in rest.char_indices() {
            if c == rep && at > start {
                self.viterbi(&rest[start..at], viterbi, ids);
                start = at;
            }
        }
        if start < rest.len() {
            self.viterbi(&rest[start..], viterbi, ids);
        }
    }

    /// models/unigram/model.rs `encode_optimized` + `tokenize`: the best path over byte
    /// positions, then its ids with consecutive unknowns fused and looked up again.
    fn viterbi(&self, s: &str, best: &mut Vec<Best>, ids: &mut Vec<u32>) {
        let b = s.as_bytes();
        let n = b.len();
        best.clear();
        best.resize(
            n + 1,
            Best {
                score: 0.0,
                start: NONE,
                id: 0,
            },
        );
        let mut i = 0;
        while i < n {
            let till_here = best[i].score;
            let mblen = utf8_len(b[i]);
            let mut has_single = false;
            for (j, edge) in self.trie.walk(&b[i..]).enumerate() {
                let id = edge.id;
                if id == NONE {
                    continue;
                }
                let end = i + j + 1;
                let candidate = edge.score + till_here;
                let target = &mut best[end];
                if target.start == NONE || candidate > target.score {
                    *target = Best {
                        score: candidate,
                        start: i as u32,
                        id,
                    };
                }
                if j + 1 == mblen {
                    has_single = true;
                }
            }
            if !has_single {
                let candidate = self.unk_score + till_here;
                let target = &mut best[i + mblen];
                if target.start == NONE || candidate > target.score {
                    *target = Best {
                        score: candidate,
                        start: i as u32,
                        id: self.unk,
                    };
                }
            }
            i += mblen;
        }
        let first = ids.len();
        let mut end = n;
        // A run of unknowns [fused_start, fused_end), gathered from the back.
        let mut fused: Option<(usize, usize)> = None;
        while end > 0 {
            let node = best[end];
            let start = node.start as usize;
            if node.id == self.unk {
                fused = Some((start, fused.map_or(end, |(_, e)| e)));
            } else {
                if let Some((fs, fe)) = fused.take() {
                    ids.push(self.lookup(&b[fs..fe]));
                }
                ids.push(node.id);
            }
            end = start;
        }
        if let Some((fs, fe)) = fused {
            ids.push(self.lookup(&b[fs..fe]));
        }
        ids[first..].reverse();
    }

    /// The id of a whole piece, or the unknown id: the library's token → id map holds exactly
    /// the trie's pieces.
    fn lookup(&self, piece: &[u8]) -> u32 {
        let mut steps = 0;
        let mut id = NONE;
        for edge in self.trie.walk(piece) {
            steps += 1;
            id = edge.id;
        }
        if steps == piece.len() && id != NONE {
            id
        } else {
            self.unk
        }
    }
}

/// Always and Never prepend the same way to every pre-token; First depends on the pre-token's
/// offset in the original text, which this module does not track.
fn prepend_of(m: &Metaspace) -> Option<bool> {
    match m.get_prepend_scheme() {
        PrependScheme::Always => Some(true),
        PrependScheme::Never => Some(false),
        PrependScheme::First => None,
    }
}

fn unigram_head(model: &Unigram) -> Option<UnigramHead> {
    let json = serde_json::to_vec(model).ok()?;
    serde_json::from_slice(&json).ok()
}

/// Length in bytes of the UTF-8 character that starts with `lead`.
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// The best path ending at a byte position: its score, where its last piece starts (NONE:
/// not reached yet) and that piece's id.
#[derive(Clone, Copy)]
struct Best {
    score: f64,
    start: u32,
    id: u32,
}

/// A byte trie of the vocabulary pieces. A node is a run of edges, sorted by label, and each edge
/// carries all its child needs: the piece id ending there (NONE if none; the last id when a
/// piece is listed twice, as the library's token map keeps) and where the child's own edges
/// lie. So one step of a walk reads one run of edges, usually one cache line; a node with many
/// edges also has a bitmap of its labels, whose rank gives the edge without a search.
struct Trie {
    edges: Vec<Edge>,
    bitmaps: Vec<[u64; 4]>,
    /// The root's edges by label, since every position starts there.
    root: [Option<Edge>; 256],
}

#[derive(Clone, Copy)]
struct Edge {
    /// The score of piece `id` (0 when none), here to spare a look-up in a far array.
    score: f64,
    /// The child's edges: `edges[first..first + count]`.
    first: u32,
    id: u32,
    /// The child's label bitmap, or NONE when it has at most `SCAN` edges.
    bitmap: u32,
    count: u16,
    label: u8,
}

/// Up to this many edges, a linear scan of the labels beats the bitmap.
const SCAN: usize = 8;

impl Edge {
    fn children(self) -> std::ops::Range<usize> {
        self.first as usize..self.first as usize + self.count as usize
    }
}

impl Trie {
    /// Builds breadth first over the sorted (piece, score) list, so that each node's edges are
    /// contiguous. `None` past u32 ids.
    fn build<'a>(pieces: impl Iterator<Item = (&'a [u8], f64)>) -> Option<Trie> {
        let mut sorted = Vec::new();
        for (id, (p, score)) in pieces.enumerate() {
            sorted.push((p, (u32::try_from(id).ok()?, score)));
        }
        // A piece listed twice keeps its last id, as the library's token map does.
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0).then(b.1 .0.cmp(&a.1 .0)));
        sorted.dedup_by(|later, kept| later.0 == kept.0);
        // Per node, in breadth-first order: its piece (id and score) and its run of edges; per
        // edge, its label and child node.
        let mut node_id = vec![(NONE, 0.0)];
        let mut node_edges: Vec<(u32, u16)> = Vec::new();
        let mut edge_to: Vec<(u8, usize)> = Vec::new();
        // Node k covers sorted[lo..hi], the pieces that share its prefix of length `depth`.
        let mut queue = std::collections::VecDeque::from([(0usize, sorted.len(), 0usize)]);
        while let Some((mut lo, hi, depth)) = queue.pop_front() {
            let node = node_edges.len();
            if lo < hi && sorted[lo].0.len() == depth {
                node_id[node] = sorted[lo].1;
                lo += 1;
            }
            let first = u32::try_from(edge_to.len()).ok()?;
            while lo < hi {
                let label = sorted[lo].0[depth];
                let end = lo + sorted[lo..hi].partition_point(|(p, _)| p[depth] == label);
                // Children are numbered in the order the queue will reach them.
                edge_to.push((label, node_id.len() + queue.len()));
                queue.push_back((lo, end, depth + 1));
                lo = end;
            }
            let count = u16::try_from(edge_to.len() - first as usize).ok()?;
            node_edges.push((first, count));
            if queue.front().is_some() {
                node_id.push((NONE, 0.0));
            }
        }
        let mut bitmaps = Vec::new();
        let mut node_bitmap = vec![NONE; node_edges.len()];
        for (node, &(first, count)) in node_edges.iter().enumerate() {
            if count as usize > SCAN {
                let mut bits = [0u64; 4];
                for &(label, _) in &edge_to[first as usize..first as usize + count as usize] {
                    bits[label as usize >> 6] |= 1 << (label & 63);
                }
                node_bitmap[node] = u32::try_from(bitmaps.len()).ok()?;
                bitmaps.push(bits);
            }
        }
        let edge = |&(label, to): &(u8, usize)| Edge {
            score: node_id[to].1,
            first: node_edges[to].0,
            id: node_id[to].0,
            bitmap: node_bitmap[to],
            count: node_edges[to].1,
            label,
        };
        let edges: Vec<Edge> = edge_to.iter().map(edge).collect();
        let mut root = [None; 256];
        for e in &edges[..node_edges[0].1 as usize] {
            root[e.label as usize] = Some(*e);
        }
        Some(Trie {
            edges,
            bitmaps,
            root,
        })
    }

    /// The edge labelled `label` out of the node that `from` leads to.
    #[inline]
    fn step(&self, from: Edge, label: u8) -> Option<Edge> {
        let edges = &self.edges[from.children()];
        if from.bitmap == NONE {
            return edges.iter().find(|e| e.label == label).copied();
        }
        // The edges are sorted by label: the edge's index is the number of labels below it.
        let bits = &self.bitmaps[from.bitmap as usize];
        let (word, bit) = (label as usize >> 6, label & 63);
        if bits[word] >> bit & 1 == 0 {
            return None;
        }
        let below: u32 = bits[..word].iter().map(|w| w.count_ones()).sum::<u32>()
            + (bits[word] & ((1u64 << bit) - 1)).count_ones();
        edges.get(below as usize).copied()
    }

    /// The edges along `piece` from the root, in order, until it leaves the trie.
    #[inline]
    fn walk<'a>(&'a self, piece: &'a [u8]) -> impl Iterator<Item = Edge> + 'a {
        let mut at: Option<Edge> = None;
        piece.iter().map_while(move |&x| {
            let next = match at {
                None => self.root[x as usize],
                Some(e) => self.step(e, x),
            };
            at = next;
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn precompiled() -> Precompiled {
        let json = include_str!("bench/xlmr_normalizer.json");
        match serde_json::from_str(json) {
            Ok(NormalizerWrapper::Precompiled(p)) => p,
            _ => panic!("src/bench/xlmr_normalizer.json is not a Precompiled normalizer"),
        }
    }

    /// A one-piece tokenizer around the nmt_nfkc normalizer, for its normalization tables.
    fn fast() -> FastUnigram {
        let normalizer: serde_json::Value =
            serde_json::from_str(include_str!("bench/xlmr_normalizer.json")).unwrap();
        let vocab = serde_json::json!({"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]});
        let doc = serde_json::json!({
            "version": "1.0", "added_tokens": [],
            "normalizer": normalizer,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                              "prepend_scheme": "always", "split": true},
            "model": vocab,
        });
        let t = Tokenizer::from_bytes(doc.to_string().as_bytes()).unwrap();
        FastUnigram::new(&t).unwrap()
    }

    /// The ASCII table is `transform` of each character (itself when unmapped), and CR LF
    /// normalizes as the library's grapheme loop does it.
    #[test]
    fn ascii_table_equals_transform() {
        let p = precompiled();
        let f = fast();
        for b in 0u8..128 {
            let c = (b as char).to_string();
            let want = p.transform(&c).unwrap_or(&c);
            assert_eq!(f.ascii[b as usize], want, "{b:#x}");
            assert_eq!(f.keep[b as usize], b != b'\r' && want == c, "{b:#x}");
        }
        assert_eq!(f.crlf, p.normalize_string("\r\n"));
    }

    /// Cutting the text between ASCII characters changes no grapheme: every string of three
    /// characters from a set of awkward ones, and every ASCII character or pair of a few
    /// between two awkward ones, normalizes as the library's whole-text loop.
    #[test]
    fn normalize_equals_the_library_on_short_mixed_strings() {
        let p = precompiled();
        let f = fast();
        let awkward = [
            "a",
            " ",
            "\r",
            "\n",
            "\t",
            "\u{7}",
            "\u{301}",
            "\u{200d}",
            "\u{600}",
            "\u{d4e}",
            "\u{1f1eb}",
            "\u{1f468}",
            "\u{fe0f}",
            "\u{a0}",
            "\u{3000}",
            "\u{ff21}",
            "\u{e9}",
            "\u{1100}",
            "\u{1161}",
            "\u{ac00}",
            "\u{915}",
            "\u{94d}",
            "\u{2581}",
            "\u{ad}",
            "\u{903}",
            "\u{e0061}",
        ];
        let ascii: Vec<String> = (0u8..128).map(|b| (b as char).to_string()).collect();
        let few = ["a", " ", "\r", "\n", "\u{7}", "1", "#", "*"];
        let mut middles: Vec<String> = awkward.iter().map(|m| m.to_string()).collect();
        middles.extend(ascii.iter().cloned());
        for x in few {
            middles.extend(few.iter().map(|y| format!("{x}{y}")));
        }
        let mut out = String::new();
        for x in awkward {
            for m in &middles {
                for z in awkward {
                    let s = format!("{x}{m}{z}");
                    out.clear();
                    f.normalize(&s, &mut out);
                    assert_eq!(out, p.normalize_string(&s), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn trie_finds_every_piece_and_keeps_the_last_id() {
        let pieces: [&[u8]; 6] = [b"ab", b"a", b"abc", b"b", b"ab", b"\xe2\x96\x81"];
        let t = Trie::build(pieces.iter().map(|&p| (p, 0.0))).unwrap();
        let find = |p: &[u8]| {
            let path: Vec<Edge> = t.walk(p).collect();
            match path.last() {
                Some(e) if path.len() == p.len() => e.id,
                _ => NONE,
            }
        };
        assert_eq!(find(b"a"), 1);
        assert_eq!(find(b"ab"), 4);
        assert_eq!(find(b"abc"), 2);
        assert_eq!(find(b"b"), 3);
        assert_eq!(find(b"\xe2\x96\x81"), 5);
        assert_eq!(find(b"c"), NONE);
        assert_eq!(find(b"abcd"), NONE);
        assert_eq!(find(b"\xe2"), NONE);

        // A node with more edges than SCAN: found through its bitmap, across all four words.
        let wide: Vec<Vec<u8>> = (0u8..=255)
            .step_by(3)
            .map(|x| vec![b'w', x, b'z'])
            .collect();
        let t = Trie::build(wide.iter().map(|p| (p.as_slice(), 0.0))).unwrap();
        assert!(t.root[b'w' as usize].is_some_and(|e| e.bitmap != NONE));
        for x in 0u8..=255 {
            let path: Vec<Edge> = t.walk(&[b'w', x, b'z']).collect();
            let id = match path.last() {
                Some(e) if path.len() == 3 => e.id,
                _ => NONE,
            };
            let want = if x % 3 == 0 { x as u32 / 3 } else { NONE };
            assert_eq!(id, want, "{x}");
        }
    }
}
