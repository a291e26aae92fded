//! An exported GGUF measured as deployed: llama.cpp's own `llama-perplexity` scores it against
//! the base (`--kl-divergence`, on the same texts and positions as our evaluation) and
//! `llama-bench` times its decode, so a run's numbers "as measured here" stand beside the
//! numbers of the file a user ships.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// llama.cpp's tools, from a build directory (`scripts/llamacpp-peer.sh` makes one).
#[derive(Debug, Clone)]
pub struct LlamaCpp {
    perplexity: PathBuf,
    bench: Option<PathBuf>,
}

/// Where `scripts/llamacpp-peer.sh` puts its build.
pub fn default_llamacpp_dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".cache/reparam/llamacpp/build/bin"))
}

impl LlamaCpp {
    /// The tools in `dir` (else the default build directory); an error naming how to get them.
    pub fn find(dir: Option<&Path>) -> anyhow::Result<Self> {
        let dir = dir.map(Path::to_path_buf).or_else(default_llamacpp_dir);
        let perplexity = dir
            .as_ref()
            .map(|d| d.join("llama-perplexity"))
            .filter(|p| p.is_file())
            .context(
                "measuring an export as deployed needs llama.cpp's llama-perplexity: build it with \
                 scripts/llamacpp-peer.sh, or pass --peer-bin DIR",
            )?;
        let bench = dir.map(|d| d.join("llama-bench")).filter(|p| p.is_file());
        Ok(Self { perplexity, bench })
    }
}

/// What llama.cpp measured on one text.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeployedDomain {
    pub name: String,
    pub ppl: f64,
    pub kld_mean: f64,
    pub top1_agree: f64,
}

/// What llama.cpp measured on the exported file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployed {
    /// Over the texts, each scoring the same positions: geometric mean of the perplexities,
    /// mean KLD and top-1 agreement.
    pub ppl: f64,
    pub kld_mean: f64,
    pub top1_agree: f64,
    /// `llama-bench`'s generation speed (tokens/s), when it was found.
    pub decode_tok_s: Option<f64>,
    pub domains: Vec<DeployedDomain>,
}

/// Runs one of llama.cpp's tools; its output (stdout then stderr), or an error with the log's
/// end when it fails.
pub fn run_tool<S: AsRef<std::ffi::OsStr>>(
    exe: &Path,
    args: impl IntoIterator<Item = S>,
) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .args(args)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        out.status.success(),
        "{} failed:\n{}",
        exe.display(),
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    Ok(log)
}

/// The number after `label` and a colon in a llama.cpp statistics block (the label also heads
/// a column of the per-chunk table, without a colon).
fn stat(log: &str, label: &str) -> Option<f64> {
    log.match_indices(label).find_map(|(at, _)| {
        let rest = log[at + label.len()..].trim_start().strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Which positions llama.cpp scores, as our evaluation does, and on how many threads.
#[derive(Debug, Clone, Copy)]
pub struct Positions {
    pub ctx: usize,
    pub chunks: usize,
    pub threads: usize,
}

/// Scores `exported` against `base` on each `(name, text file)` at `at`, then times it with
/// `llama-bench`. `work` holds the base's logits between the two passes.
pub fn measure(
    tools: &LlamaCpp,
    base: &Path,
    exported: &Path,
    texts: &[(String, PathBuf)],
    at: Positions,
    work: &Path,
) -> anyhow::Result<Deployed> {
    let Positions {
        ctx,
        chunks,
        threads,
    } = at;
    let mut domains = Vec::new();
    for (name, text) in texts {
        let logits = work.join(format!("base-{name}.kld"));
        let common = |model: &Path| -> Vec<std::ffi::OsString> {
            let mut a: Vec<std::ffi::OsString> = vec!["-m".into(), model.into()];
            a.extend(["-f".into(), text.into()]);
            for (k, v) in [
                ("-c", ctx),
                ("--chunks", chunks),
                ("-t", threads),
                ("-b", ctx),
            ] {
                a.push(k.into());
                a.push(v.to_string().into());
            }
            a.push("--kl-divergence-base".into());
            a.push(logits.clone().into());
            a
        };
        let args = common(base);
        run_tool(&tools.perplexity, &args)?;
        let mut args = common(exported);
        args.push("--kl-divergence".into());
        // llama.cpp prints through a logging thread, and on a loaded machine its last lines
        // (the statistics) are sometimes lost at exit although the run succeeded: ask again.
        let mut log = String::new();
        let mut parsed = None;
        for _ in 0..3 {
            log = run_tool(&tools.perplexity, &args)?;
            parsed = (|| {
                Some((
                    stat(&log, "Mean PPL(Q)")?,
                    stat(&log, "Mean    KLD")?,
                    stat(&log, "Same top p")? / 100.0,
                ))
            })();
            if parsed.is_some() {
                break;
            }
        }
        let _ = std::fs::remove_file(&logits);
        let Some((ppl, kld_mean, top1_agree)) = parsed else {
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            anyhow::bail!(
                "llama-perplexity printed no KL-divergence statistics for {name} (3 tries):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        };
        domains.push(DeployedDomain {
            name: name.clone(),
            ppl,
            kld_mean,
            top1_agree,
        });
    }
    anyhow::ensure!(!domains.is_empty(), "no text to measure the export on");
    let n = domains.len() as f64;
    let decode_tok_s = match &tools.bench {
        Some(bench) => {
            let t = threads.to_string();
            let args = [
                "-m".as_ref(),
                exported.as_os_str(),
                "-t".as_ref(),
                t.as_ref(),
            ];
            let fixed = ["-n", "64", "-p", "0", "-r", "3", "-o", "json"].map(std::ffi::OsStr::new);
            let log = run_tool(bench, args.into_iter().chain(fixed))?;
            let json_start = log.find('[').context("llama-bench printed no JSON")?;
            let end = log.rfind(']').context("llama-bench printed no JSON")?;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&log[json_start..=end])
                .context("parsing llama-bench's JSON")?;
            rows.iter()
                .find(|r| r["n_gen"].as_u64().unwrap_or(0) > 0)
                .and_then(|r| r["avg_ts"].as_f64())
        }
        None => None,
    };
    Ok(Deployed {
        ppl: (domains.iter().map(|d| d.ppl.ln()).sum::<f64>() / n).exp(),
        kld_mean: domains.iter().map(|d| d.kld_mean).sum::<f64>() / n,
        top1_agree: domains.iter().map(|d| d.top1_agree).sum::<f64>() / n,
        decode_tok_s,
        domains,
    })
}

#[cfg(test)]
mod tests {
    use super::stat;

    #[test]
    fn statistics_are_read_from_llama_cpp_logs() {
        let log = "chunk   PPL   KL Divergence   Same top p\n\
                   Mean PPL(Q)                   :   8.696498 ±   0.339696\n\
                   Mean PPL(base)                :   6.434742 ±   0.252139\n\
                   Mean    KLD:   0.405327 ±   0.007038\n\
                   Same top p: 70.564 ± 0.714 %\n";
        assert_eq!(stat(log, "Mean PPL(Q)"), Some(8.696498));
        assert_eq!(stat(log, "Mean    KLD"), Some(0.405327));
        assert_eq!(stat(log, "Same top p"), Some(70.564));
        assert_eq!(stat(log, "Mean PPL(X)"), None);
    }
}
