//! Evaluation suites: several held-out texts of different domains scored as one measurement,
//! so an accuracy number says how a model does off its calibration's domain, not on one text.
//!
//! The built-in suite `held-out` (`assets/text/suite/`, plus the licence texts as its `legal`
//! domain) shares no document with the bundled calibration mixture (`assets/text/calib-mix.txt`;
//! `tests/texts.rs` checks for shared word 12-grams). A suite can also be a directory of `.txt`
//! files, one domain each. Suite metrics are token-weighted over the domains: perplexity is
//! `exp` of the weighted mean log-likelihood, KLD and top-1 agreement are weighted means.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::Context as _;

use super::perplexity::{Forward, KldReport, PerplexityOptions, PerplexityReport, perplexity_each};
use crate::model::Model;

/// The name of the built-in suite, the default evaluation of models without one of their own.
pub const HELD_OUT: &str = "held-out";

/// The built-in suite's domains, embedded so the binary runs anywhere.
const HELD_OUT_DOMAINS: [(&str, &str); 6] = [
    ("prose", include_str!("../../assets/text/suite/prose.txt")),
    (
        "dialogue",
        include_str!("../../assets/text/suite/dialogue.txt"),
    ),
    (
        "technical",
        include_str!("../../assets/text/suite/technical.txt"),
    ),
    ("code", include_str!("../../assets/text/suite/code.txt")),
    ("tables", include_str!("../../assets/text/suite/tables.txt")),
    ("legal", include_str!("../../assets/text/licenses.txt")),
];

/// One text of a suite.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub text: String,
}

/// The domains of suite `name`: the built-in [`HELD_OUT`], or a directory of `.txt` files
/// (sorted by name; the file stem names the domain).
pub fn suite_domains(name: &str) -> anyhow::Result<Vec<Domain>> {
    if name == HELD_OUT {
        return Ok(HELD_OUT_DOMAINS
            .iter()
            .map(|(n, t)| Domain {
                name: n.to_string(),
                text: t.to_string(),
            })
            .collect());
    }
    let dir = Path::new(name);
    anyhow::ensure!(
        dir.is_dir(),
        "no suite {name:?}: give `{HELD_OUT}` or a directory of .txt files, one per domain"
    );
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the suite directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "the suite directory {} has no .txt files",
        dir.display()
    );
    files
        .iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok(Domain { name, text })
        })
        .collect()
}

/// A suite's content as it enters a run key: the built-in name, or a hash of a directory's
/// domain names and texts (the same texts under another path are the same experiment).
pub fn suite_key(name: &str) -> anyhow::Result<String> {
    if name == HELD_OUT {
        return Ok(HELD_OUT.to_string());
    }
    let mut h = blake3::Hasher::new();
    for d in suite_domains(name)? {
        h.update(d.name.as_bytes());
        h.update(&[0]);
        h.update(d.text.as_bytes());
        h.update(&[0]);
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// The headline metrics of one domain, kept beside the suite's aggregate.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DomainMetrics {
    pub ppl: f64,
    pub kld_mean: Option<f64>,
    pub top1_agree: Option<f64>,
    pub tokens: usize,
}

impl From<&PerplexityReport> for DomainMetrics {
    fn from(r: &PerplexityReport) -> Self {
        Self {
            ppl: r.ppl,
            kld_mean: r.kld.as_ref().map(|k| k.kld_mean),
            top1_agree: r.kld.as_ref().map(|k| k.top1_agree),
            tokens: r.tokens,
        }
    }
}

/// Combines per-domain reports into one, weighting each by its scored tokens. Perplexity is
/// `exp` of the weighted mean log-likelihood; means and agreement are weighted means; the
/// standard errors combine as independent estimates (on the log scale for perplexity); RMS Δp
/// is the root of the weighted mean square. The median and p99 of the KLD cannot be combined
/// from summaries: they are the weighted means of the domains' values.
pub fn combine(reports: &[PerplexityReport]) -> anyhow::Result<PerplexityReport> {
    let total: usize = reports.iter().map(|r| r.tokens).sum();
    anyhow::ensure!(total > 0, "the suite scored no tokens");
    let w: Vec<f64> = reports
        .iter()
        .map(|r| r.tokens as f64 / total as f64)
        .collect();
    let wmean = |f: &dyn Fn(&PerplexityReport) -> f64| -> f64 {
        reports.iter().zip(&w).map(|(r, w)| w * f(r)).sum()
    };
    let wse = |f: &dyn Fn(&PerplexityReport) -> f64| -> f64 {
        reports
            .iter()
            .zip(&w)
            .map(|(r, w)| (w * f(r)).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let nll_mean = wmean(&|r| r.nll_mean);
    let ppl = nll_mean.exp();
    let kld = if reports.iter().all(|r| r.kld.is_some()) {
        let k = |r: &PerplexityReport| r.kld.clone().unwrap_or_default();
        Some(KldReport {
            kld_mean: wmean(&|r| k(r).kld_mean),
            kld_stderr: wse(&|r| k(r).kld_stderr),
            kld_median: wmean(&|r| k(r).kld_median),
            kld_p99: wmean(&|r| k(r).kld_p99),
            top1_agree: wmean(&|r| k(r).top1_agree),
            rms_dp: wmean(&|r| k(r).rms_dp.powi(2)).sqrt(),
        })
    } else {
        None
    };
    Ok(PerplexityReport {
        ppl,
        ppl_stderr: ppl * wse(&|r| r.ppl_stderr / r.ppl.max(f64::MIN_POSITIVE)),
        nll_mean,
        tokens: total,
        chunks: reports.iter().map(|r| r.chunks).sum(),
        ctx: reports.first().map_or(0, |r| r.ctx),
        seconds: reports.iter().map(|r| r.seconds).sum(),
        kld,
    })
}

/// Scores `model` on every domain's tokens (against `base` for KLD and agreement), each
/// windowed by `opts`, and combines them with [`combine`]. Progress runs over all domains.
pub fn score(
    model: &Model,
    domains: &[(String, Vec<u32>)],
    opts: PerplexityOptions,
    base: Option<&Model>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> anyhow::Result<(PerplexityReport, DomainTable)> {
    const STEPS: usize = 1000;
    let n = domains.len();
    let names: Vec<String> = domains.iter().map(|(d, _)| format!("domain {d}")).collect();
    let texts: Vec<(&str, &[u32])> = names
        .iter()
        .zip(domains)
        .map(|(name, (_, tokens))| (name.as_str(), tokens.as_slice()))
        .collect();
    let reports = perplexity_each(model, &texts, opts, base, Forward::Auto, &mut |i, d, t| {
        progress(i * STEPS + d * STEPS / t.max(1), n * STEPS)
    })?;
    let mut table = DomainTable::new();
    for ((name, _), r) in domains.iter().zip(&reports) {
        table.insert(name.clone(), DomainMetrics::from(r));
    }
    Ok((combine(&reports)?, table))
}

/// The word 12-grams of a text, hashed.
fn word_grams(text: &str) -> HashSet<u64> {
    const N: usize = 12;
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(N)
        .map(|w| {
            let mut h = blake3::Hasher::new();
            for x in w {
                h.update(x.as_bytes());
                h.update(b" ");
            }
            let b = h.finalize();
            u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
        })
        .collect()
}

/// The fraction of `eval`'s 12-grams that are in `calib_grams`.
fn shared_fraction(calib_grams: &HashSet<u64>, eval: &str) -> f64 {
    let e = word_grams(eval);
    if e.is_empty() {
        return 0.0;
    }
    e.iter().filter(|g| calib_grams.contains(g)).count() as f64 / e.len() as f64
}

/// Word 12-grams shared between two texts, as a fraction of `eval`'s 12-grams: a calibration
/// text that contains the evaluated documents makes the evaluation in-domain by construction.
pub fn shared_ngram_fraction(calib: &str, eval: &str) -> f64 {
    shared_fraction(&word_grams(calib), eval)
}

/// A warning when the calibration text overlaps an evaluated text (more than 5 % of its
/// 12-grams), naming the domains; `None` when they are disjoint.
pub fn overlap_warning(calib: &str, domains: &[Domain]) -> Option<String> {
    let calib_grams = word_grams(calib);
    let hits: Vec<String> = domains
        .iter()
        .filter_map(|d| {
            let f = shared_fraction(&calib_grams, &d.text);
            (f > 0.05).then(|| format!("{} ({:.0} %)", d.name, 100.0 * f))
        })
        .collect();
    (!hits.is_empty()).then(|| {
        format!(
            "the calibration text overlaps the evaluated text ({}): the accuracy is measured in \
             the calibration's own domain and will look better than it is elsewhere",
            hits.join(", ")
        )
    })
}

/// Per-domain metrics by domain name.
pub type DomainTable = BTreeMap<String, DomainMetrics>;

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ppl: f64, tokens: usize, kld: f64, top1: f64) -> PerplexityReport {
        PerplexityReport {
            ppl,
            ppl_stderr: 0.1 * ppl,
            nll_mean: ppl.ln(),
            tokens,
            chunks: 1,
            ctx: 64,
            seconds: 1.0,
            kld: Some(KldReport {
                kld_mean: kld,
                kld_stderr: 0.01,
                kld_median: kld,
                kld_p99: 2.0 * kld,
                top1_agree: top1,
                rms_dp: 0.1,
            }),
        }
    }

    #[test]
    fn combine_weights_by_tokens() {
        let r = combine(&[report(10.0, 300, 0.2, 0.8), report(40.0, 100, 0.6, 0.4)]).unwrap();
        let nll = 0.75 * 10f64.ln() + 0.25 * 40f64.ln();
        assert!((r.ppl - nll.exp()).abs() < 1e-9);
        let k = r.kld.unwrap();
        assert!((k.kld_mean - 0.3).abs() < 1e-12);
        assert!((k.top1_agree - 0.7).abs() < 1e-12);
        assert_eq!(r.tokens, 400);
        // One domain is itself.
        let one = combine(&[report(12.5, 77, 0.1, 0.9)]).unwrap();
        assert!((one.ppl - 12.5).abs() < 1e-9);
        assert!((one.ppl_stderr - 1.25).abs() < 1e-9);
    }

    #[test]
    fn the_built_in_suite_has_its_domains_and_a_directory_is_a_suite() {
        let d = suite_domains(HELD_OUT).unwrap();
        assert_eq!(d.len(), 6);
        assert!(
            d.iter().all(|d| d.text.len() > 30_000),
            "every domain fills 16 chunks"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "beta text").unwrap();
        std::fs::write(dir.path().join("a.txt"), "alpha text").unwrap();
        std::fs::write(dir.path().join("notes.md"), "ignored").unwrap();
        let name = dir.path().to_str().unwrap();
        let d = suite_domains(name).unwrap();
        assert_eq!(
            d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let key = suite_key(name).unwrap();
        std::fs::write(dir.path().join("b.txt"), "beta text, edited").unwrap();
        assert_ne!(suite_key(name).unwrap(), key, "the key follows the content");
        let err = suite_domains("no-such-suite").unwrap_err().to_string();
        assert!(err.contains("held-out"), "{err}");
    }

    #[test]
    fn overlap_is_warned_and_disjoint_texts_are_not() {
        let doc = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat \
                   in the sun";
        let other = "completely different words appear in this sentence about compilers and \
                     registers and caches and pipelines of modern processors today";
        let domains = [Domain {
            name: "prose".into(),
            text: doc.into(),
        }];
        assert!(overlap_warning(other, &domains).is_none());
        let w = overlap_warning(&format!("{other} {doc}"), &domains).unwrap();
        assert!(w.contains("prose (100 %)"), "{w}");
    }
}
