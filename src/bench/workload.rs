//! Seeded reranking workloads: one query and N passages per call, with passage lengths (in
//! tokens of the model's own tokenizer) drawn from a fixed distribution.
//!
//! - `marco`: short web passages, 40-200 tokens, log-normal around 72 (median) clipped to the
//!   range, mean near 80 (MS MARCO passages).
//! - `rag`: retrieval chunks, uniform in 200-500 tokens.
//!
//! The text is English-looking prose drawn word by word from a Zipf-weighted vocabulary of
//! common words, with capitals, punctuation, numbers, hyphens and a few accented and
//! non-Latin words, so that a real tokenizer does real work: normalisation, splitting,
//! sub-word lookups. A passage grows until its token count reaches the drawn length; the count
//! is the sum over words, which is exact for whitespace-splitting tokenizers (BERT WordPiece,
//! SentencePiece's Metaspace).
//!
//! The whole workload is exported as JSON (`crossrank bench --export-workload`) so that the
//! peers score the very same strings.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Rng;
use crate::error::{Error, Result};

/// The passage-length distribution of a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lengths {
    Marco,
    Rag,
}

impl std::str::FromStr for Lengths {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "marco" => Ok(Lengths::Marco),
            "rag" => Ok(Lengths::Rag),
            _ => Err(Error::input(format!(
                "lengths `{s}` is not one of: marco, rag"
            ))),
        }
    }
}

impl std::fmt::Display for Lengths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Lengths::Marco => "marco",
            Lengths::Rag => "rag",
        })
    }
}

impl Lengths {
    /// The smallest and largest passage length, in tokens.
    pub fn bounds(self) -> (usize, usize) {
        match self {
            Lengths::Marco => (40, 200),
            Lengths::Rag => (200, 500),
        }
    }

    /// Draws one passage length in tokens.
    pub fn draw(self, rng: &mut Rng) -> usize {
        let (lo, hi) = self.bounds();
        match self {
            Lengths::Marco => {
                let x = (72f64.ln() + 0.4 * rng.normal()).exp().round() as usize;
                x.clamp(lo, hi)
            }
            Lengths::Rag => rng.range(lo, hi),
        }
    }
}

/// One call: a query and its candidate passages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub query: String,
    pub passages: Vec<String>,
}

/// The calls of one candidate count N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSet {
    pub n: usize,
    pub calls: Vec<Call>,
}

/// A whole workload, as exported for the peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub seed: u64,
    pub lengths: Lengths,
    pub sets: Vec<CallSet>,
}

impl Workload {
    /// `calls` distinct calls for each N in `candidates`. `count` gives a text's token count
    /// without special tokens.
    pub fn generate(
        seed: u64,
        lengths: Lengths,
        candidates: &[usize],
        calls: usize,
        count: &dyn Fn(&str) -> Result<usize>,
    ) -> Result<Self> {
        let mut gen = TextGen::new(count);
        let mut sets = Vec::with_capacity(candidates.len());
        for &n in candidates {
            let mut rng = Rng::for_name(seed, &format!("{lengths}/{n}"));
            let mut set = CallSet {
                n,
                calls: Vec::with_capacity(calls),
            };
            for _ in 0..calls {
                let query = gen.query(&mut rng)?;
                let passages = (0..n)
                    .map(|_| {
                        let target = lengths.draw(&mut rng);
                        gen.passage(&mut rng, target)
                    })
                    .collect::<Result<Vec<_>>>()?;
                set.calls.push(Call { query, passages });
            }
            sets.push(set);
        }
        Ok(Workload {
            seed,
            lengths,
            sets,
        })
    }
}

/// `n` queries of the text workloads' kind (about 12 tokens each), from the stream `name`:
/// what the image workload asks of its images.
pub fn queries(
    seed: u64,
    name: &str,
    n: usize,
    count: &dyn Fn(&str) -> Result<usize>,
) -> Result<Vec<String>> {
    let mut gen = TextGen::new(count);
    let mut rng = Rng::for_name(seed, name);
    (0..n).map(|_| gen.query(&mut rng)).collect()
}

/// Common English words, most frequent first (the draw is Zipf-weighted by this order),
/// then rarer words: technical, proper names, accented, non-Latin.
const WORDS: &str = "the of and to a in is that for it as was with be by on not he this are or \
his from at which but have an they you were her she there been one all we their has would \
when if so no will can more other about what up its into than them only some could these \
two may first then do any like my now over such our man me even most made after also did \
many before must through back years where much your way well down should because each just \
those people how too little state good very make world still own see men work long get here \
between both life being under never day same another know while last might us great old year \
off come since against go came right used take three water system number part city time \
information health data research energy market company service history school family country \
program report value process development policy power support question problem result change \
level area study group building center government price cost rate model design control \
network software computer internet account email password website page search results page \
address phone customer product order payment shipping return delivery store online free \
temperature weather climate rain snow summer winter spring autumn average degrees \
disease symptoms treatment patients doctor medical blood heart pain cancer diabetes vitamin \
protein calories diet exercise weight muscle sleep body skin hair infection virus bacteria \
insurance salary tax income loan mortgage credit bank interest budget invoice employee \
university student course degree teacher class exam science biology chemistry physics \
mathematics language english spanish french german chinese definition meaning example \
recipe chicken cheese bread sugar butter oven minutes cook bake sauce rice pasta coffee \
population river mountain island ocean coast capital county province region border \
president election congress court law act federal council minister party vote \
season team player game score league coach match football basketball baseball tennis \
music album song band film movie actor director character series episode novel author book \
animal dog cat bird fish horse species plant tree flower seed leaf forest garden \
engine vehicle car truck battery fuel electric speed mile road traffic airport flight train \
average approximately typically usually generally however therefore although because whereas \
located known called named considered called required available recommended including \
according depending compared related based caused associated designed developed produced \
increase decrease reduce improve prevent protect provide include contain allow require \
different important common possible available several various certain specific similar \
natural human social economic political national international local public private \
small large high low early late short full major minor main total annual daily \
Washington London Paris Berlin Tokyo Sydney Toronto Chicago California Texas Florida \
Europe Africa Asia America Canada Australia India China Japan Mexico Brazil Germany \
Monday Friday January March June September December Microsoft Google Amazon Apple \
café naïve résumé façade Zürich São Müller Ångström coöperate déjà-vu piñata \
well-known long-term high-quality step-by-step state-of-the-art e-mail co-author \
Москва 東京 北京 القاهرة Αθήνα";

/// Frequent function words for queries.
const QUERY_STARTS: &[&str] = &[
    "what is",
    "how to",
    "how much does",
    "when did",
    "why is",
    "where is",
    "who was",
    "what are the",
    "how long does",
    "can you",
    "define",
    "is it safe to",
];

/// Builds sentences word by word and counts their tokens with the model's tokenizer.
struct TextGen<'a> {
    words: Vec<&'static str>,
    /// Cumulative Zipf weights over `words`.
    cumulative: Vec<f64>,
    count: &'a dyn Fn(&str) -> Result<usize>,
    cache: HashMap<String, usize>,
}

impl<'a> TextGen<'a> {
    fn new(count: &'a dyn Fn(&str) -> Result<usize>) -> Self {
        let words: Vec<&'static str> = WORDS.split_whitespace().collect();
        let mut cumulative = Vec::with_capacity(words.len());
        let mut acc = 0.0;
        for rank in 0..words.len() {
            // Zipf with exponent 0.9, flattened at the head so that content words appear.
            acc += 1.0 / ((rank + 8) as f64).powf(0.9);
            cumulative.push(acc);
        }
        TextGen {
            words,
            cumulative,
            count,
            cache: HashMap::new(),
        }
    }

    fn word(&self, rng: &mut Rng) -> &'static str {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let x = rng.unit() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.words[i.min(self.words.len() - 1)]
    }

    fn tokens(&mut self, word: &str) -> Result<usize> {
        if let Some(&n) = self.cache.get(word) {
            return Ok(n);
        }
        let n = (self.count)(word)?;
        self.cache.insert(word.to_string(), n);
        Ok(n)
    }

    /// A query of about 12 tokens: a question opening and a few content words.
    fn query(&mut self, rng: &mut Rng) -> Result<String> {
        let start = QUERY_STARTS[rng.range(0, QUERY_STARTS.len() - 1)];
        let mut q = start.to_string();
        let mut tokens = self.tokens(start)?;
        let target = rng.range(10, 14);
        while tokens + 1 < target {
            let w = self.word(rng);
            tokens += self.tokens(w)?;
            q.push(' ');
            q.push_str(w);
        }
        q.push('?');
        Ok(q)
    }

    /// Sentences of prose until the token count reaches `target`.
    fn passage(&mut self, rng: &mut Rng, target: usize) -> Result<String> {
        let mut text = String::new();
        let mut tokens = 0;
        let mut in_sentence = 0;
        let mut sentence_len = rng.range(6, 22);
        while tokens < target {
            let mut w = self.word(rng).to_string();
            if rng.unit() < 0.04 {
                // Numbers: years, counts, percentages, prices.
                w = match rng.range(0, 3) {
                    0 => format!("{}", rng.range(1900, 2025)),
                    1 => format!("{}", rng.range(2, 999)),
                    2 => format!("{}%", rng.range(1, 99)),
                    _ => format!("${}.{:02}", rng.range(1, 500), rng.range(0, 99)),
                };
            }
            if in_sentence == 0 {
                let mut c = w.chars();
                if let Some(first) = c.next() {
                    w = first.to_uppercase().chain(c).collect();
                }
            }
            in_sentence += 1;
            if in_sentence >= sentence_len {
                w.push(if rng.unit() < 0.9 { '.' } else { '?' });
                in_sentence = 0;
                sentence_len = rng.range(6, 22);
            } else if rng.unit() < 0.08 {
                w.push(',');
            }
            tokens += self.tokens(&w)?;
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&w);
        }
        Ok(text)
    }
}

/// Every distinct word the generator can emit in lower case, for building a vocabulary.
pub fn vocabulary_words() -> Vec<&'static str> {
    WORDS.split_whitespace().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per 4 bytes or part: a stand-in tokenizer with word-additive counts.
    fn count(s: &str) -> Result<usize> {
        Ok(s.split_whitespace().map(|w| w.len().div_ceil(4)).sum())
    }

    #[test]
    fn same_seed_same_workload_and_lengths_follow_the_distribution() {
        let a = Workload::generate(3, Lengths::Marco, &[40, 100], 2, &count).unwrap();
        let b = Workload::generate(3, Lengths::Marco, &[40, 100], 2, &count).unwrap();
        assert_eq!(a, b);
        let c = Workload::generate(4, Lengths::Marco, &[40, 100], 2, &count).unwrap();
        assert_ne!(a, c);
        assert_eq!(a.sets[1].calls[0].passages.len(), 100);
        assert_ne!(a.sets[0].calls[0], a.sets[0].calls[1]);

        for (lengths, lo, hi, mean_lo, mean_hi) in [
            (Lengths::Marco, 40, 200, 72.0, 88.0),
            (Lengths::Rag, 200, 500, 335.0, 365.0),
        ] {
            let w = Workload::generate(1, lengths, &[200], 3, &count).unwrap();
            let lens: Vec<usize> = w.sets[0]
                .calls
                .iter()
                .flat_map(|c| c.passages.iter().map(|p| count(p).unwrap()))
                .collect();
            // A passage stops at the first word that reaches its length: at most one word
            // (≤ 4 stand-in tokens here) past it.
            assert!(
                lens.iter().all(|&l| l >= lo && l <= hi + 4),
                "{lengths}: {lens:?}"
            );
            let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
            assert!(mean > mean_lo && mean < mean_hi, "{lengths}: mean {mean}");
        }
        for call in &a.sets[0].calls {
            let q = count(&call.query).unwrap();
            assert!(
                (8..=20).contains(&q),
                "query {:?} has {q} tokens",
                call.query
            );
        }
    }

    #[test]
    fn lengths_parse_and_refuse() {
        assert_eq!("rag".parse::<Lengths>().unwrap(), Lengths::Rag);
        let e = "long".parse::<Lengths>().unwrap_err().to_string();
        assert!(e.contains("`long`") && e.contains("marco, rag"), "{e}");
    }
}
