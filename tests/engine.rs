//! The decode engine against the reference (tensor) forward: logits within a stated tolerance
//! and identical greedy continuations for every stored form, both thread pools, 1 and 2
//! threads, odd shapes; the context limit as an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TinySpec;
use reparam::engine::{Engine, EngineOptions, KvType, PoolKind, Prefill};
use reparam::eval::generate::argmax;
use reparam::model::{KvCache, Model, NoHook};
use reparam::technique::recipe::Recipe;
use reparam::technique::{CalibOptions, apply};

/// Largest |engine − reference| allowed, relative to the largest reference logit: the two sum
/// in different orders, nothing more.
const TOLERANCE: f32 = 2e-4;

fn tiny(spec: &TinySpec) -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().unwrap();
    spec.write_hf(dir.path(), 1);
    let m = Model::load(dir.path()).unwrap();
    (dir, m)
}

fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % vocab).collect()
}

/// Every position's logits from the reference, one cached step at a time.
fn reference_logits(m: &Model, toks: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::default();
    toks.iter()
        .map(|&t| {
            m.transformer
                .forward(&[t], Some(&mut cache), &mut NoHook, 0)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

/// With int8 activations: an input the two sides compute a hair apart can round to
/// neighbouring int8 levels (one step is 1/127 of its block's largest value), and the KV cache
/// carries that difference on. The kernel itself is checked exactly in its unit tests.
const INT8_TOLERANCE: f32 = 2e-2;

/// Panics unless `got` is within `tolerance` of `want`, relative to its largest logit.
fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
    let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |a, (g, r)| a.max((g - r).abs()));
    assert!(
        diff <= tolerance * scale,
        "{what}: max diff {diff} (scale {scale})"
    );
}

fn assert_engine_matches(m: &Model, toks: &[u32], what: &str) {
    let tolerance = if what.contains("int8_activations = true") {
        INT8_TOLERANCE
    } else {
        TOLERANCE
    };
    assert_engine_matches_with(m, toks, KvType::F32, tolerance, what);
    assert_prefill_matches(m, toks, tolerance, what);
}

/// The many-row pass (every position of `toks` as one window, packed layers decoded once and
/// on the fly) within `tolerance` of the reference at every position, 1 and 2 threads.
fn assert_prefill_matches(m: &Model, toks: &[u32], tolerance: f32, what: &str) {
    let want = reference_logits(m, toks);
    for threads in [1, 2] {
        let opts = EngineOptions {
            threads,
            pool: PoolKind::Rayon,
            kv: KvType::F32,
        };
        let e = Engine::new(&m.transformer, opts).unwrap();
        for (how, p) in [
            ("kept", Prefill::kept(&e)),
            ("on the fly", Prefill::on_the_fly(&e)),
        ] {
            let hidden = p.hidden(toks, 0).unwrap();
            let mut logits = Vec::new();
            p.logits(&hidden, &mut logits);
            let vocab = logits.len() / toks.len();
            for (pos, (got, w)) in logits.chunks(vocab).zip(&want).enumerate() {
                assert_close(
                    got,
                    w,
                    tolerance,
                    &format!("{what}, prefill ({how}) ×{threads}, position {pos}"),
                );
            }
            let tail = p.hidden(toks, toks.len() - 3).unwrap();
            assert_eq!(
                tail,
                hidden[hidden.len() - tail.len()..],
                "{what}: rows from a later position"
            );
        }
    }
}

/// Every position's logits within `tolerance` of the reference's, both pools, 1 and 2 threads.
fn assert_engine_matches_with(m: &Model, toks: &[u32], kv: KvType, tolerance: f32, what: &str) {
    let want = reference_logits(m, toks);
    for pool in [PoolKind::Spin, PoolKind::Rayon] {
        for threads in [1, 2] {
            let opts = EngineOptions { threads, pool, kv };
            let e = Engine::new(&m.transformer, opts).unwrap();
            let mut d = e.decoder();
            for (pos, (&t, w)) in toks.iter().zip(&want).enumerate() {
                let got = d.step(t).unwrap();
                assert_close(
                    got,
                    w,
                    tolerance,
                    &format!("{what}, {pool:?} ×{threads}, position {pos}"),
                );
            }
        }
    }
}

fn greedy_reference(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = KvCache::default();
    let mut out = Vec::new();
    let mut logits = m
        .transformer
        .forward(prompt, Some(&mut cache), &mut NoHook, prompt.len() - 1)
        .unwrap();
    for _ in 0..n {
        let l = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let t = argmax(&l);
        out.push(t);
        logits = m
            .transformer
            .forward(&[t], Some(&mut cache), &mut NoHook, 0)
            .unwrap();
    }
    out
}

fn greedy_engine(m: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    greedy_engine_with(m, prompt, n, EngineOptions::default())
}

fn greedy_engine_with(m: &Model, prompt: &[u32], n: usize, opts: EngineOptions) -> Vec<u32> {
    let e = Engine::new(&m.transformer, opts).unwrap();
    let mut d = e.decoder();
    let mut t = argmax(d.feed(prompt).unwrap());
    let mut out = vec![t];
    while out.len() < n {
        t = argmax(d.step(t).unwrap());
        out.push(t);
    }
    out
}

#[test]
fn dense_models_match_the_reference() {
    for spec in [
        TinySpec::default(),
        // Odd widths, tied embeddings, no GQA.
        TinySpec {
            hidden: 40,
            ffn: 72,
            heads: 5,
            kv_heads: 5,
            tied: true,
            ..TinySpec::default()
        },
        // Qwen2: Q/K/V biases.
        TinySpec {
            arch: "Qwen2ForCausalLM",
            hidden: 48,
            ffn: 100,
            heads: 6,
            kv_heads: 2,
            layers: 3,
            ..TinySpec::default()
        },
    ] {
        let what = format!("{} h{} f{}", spec.arch, spec.hidden, spec.ffn);
        let vocab = spec.vocab() as u32;
        let (_d, m) = tiny(&spec);
        assert_engine_matches(&m, &tokens(24, vocab), &what);
    }
}

/// The tied grouped-query tiny model the compressed-form tests start from, and its vocabulary.
fn tiny_gqa() -> (tempfile::TempDir, Model, u32) {
    let spec = TinySpec {
        hidden: 64,
        ffn: 96,
        heads: 4,
        kv_heads: 2,
        tied: true,
        ..TinySpec::default()
    };
    let (d, base) = tiny(&spec);
    (d, base, spec.vocab() as u32)
}

/// `base` compressed by the recipe `text`, calibrated on a fixed token sequence.
fn compressed(base: &Model, vocab: u32, text: &str) -> Model {
    let r = Recipe::from_toml(text).unwrap();
    let calib = tokens(600, vocab);
    let opts = CalibOptions {
        samples: 4,
        seq_len: 32,
    };
    apply(base, &r, &calib, opts, &mut |_, _, _| true)
        .unwrap()
        .model
}

#[test]
fn every_compressed_form_matches_the_reference() {
    let (_d, base, vocab) = tiny_gqa();
    for (form, body) in [
        ("shiftadd", "[layers.shiftadd]\nbits = 3\ngroup = 16\n"),
        (
            "shiftadd",
            "[layers.shiftadd]\nbits = 3\nlayout = \"column\"\ngroup = 16\n",
        ),
        (
            "shiftadd",
            "[layers.shiftadd]\nbits = 2\nlayout = \"column\"\ngroup = 0\n",
        ),
        ("rtn", "[layers.rtn]\nbits = 4\ngroup = 32\n"),
        ("rtn", "[layers.rtn]\nbits = 3\ngroup = 16\n"),
        ("rtn", "[layers.rtn]\nbits = 8\ngroup = 64\n"),
        // Int8 activations: the VNNI kernel (4 and 8 bits on whole blocks) and the scalar
        // loop (3 bits, 16-wide groups).
        (
            "rtn",
            "[layers.rtn]\nbits = 4\ngroup = 32\nsymmetric = true\nint8_activations = true\n",
        ),
        (
            "rtn",
            "[layers.rtn]\nbits = 8\ngroup = 64\nint8_activations = true\n",
        ),
        (
            "rtn",
            "[layers.rtn]\nbits = 4\ngroup = 32\nfloat_min = true\nint8_activations = true\n",
        ),
        (
            "rtn",
            "[layers.rtn]\nbits = 5\ngroup = 32\nfloat_min = true\n",
        ),
        (
            "rtn",
            "[layers.rtn]\nbits = 3\ngroup = 16\nint8_activations = true\n",
        ),
        (
            "csr",
            "[layers.prune]\nmethod = \"magnitude\"\nratio = 0.9\nform = \"csr\"\n",
        ),
        (
            "bitmask",
            "[layers.prune]\nmethod = \"wanda\"\nratio = 0.5\n",
        ),
        (
            "nm",
            "[layers.prune]\nmethod = \"nm\"\nn = 2\nm = 4\nscore = \"wanda\"\n",
        ),
        (
            "rps",
            "[layers.rps]\nratio = 2.0\nmapping = \"fold\"\nrefit = false\n",
        ),
        (
            "rps",
            "[layers.rps]\nratio = 2.0\nmapping = \"uniform\"\nrefit = false\n",
        ),
        ("f16", "f16 = true\n"),
    ] {
        for embedding in [
            "",
            "[embedding]\nbits = 8\n",
            "[embedding]\nbits = 8\ngroup = 32\nsymmetric = true\nint8_activations = true\n",
            "[embedding]\nbits = 16\n",
        ] {
            let text = format!("{embedding}[[layers]]\nmatch = \"blk.*.*\"\n{body}");
            let c = compressed(&base, vocab, &text);
            let e = Engine::new(&c.transformer, EngineOptions::default()).unwrap();
            let forms: Vec<&str> = e.linears().map(|(_, l)| l.form()).collect();
            assert!(
                forms[..forms.len() - 1].iter().all(|f| *f == form),
                "{text}: engine forms {forms:?}"
            );
            let head = match embedding {
                "" => "dense",
                e if e.contains("bits = 16") => "f16",
                _ => "rtn",
            };
            assert_eq!(forms.last(), Some(&head), "{text}");
            assert_engine_matches(&c, &tokens(12, vocab), &text);
            let prompt = tokens(5, vocab);
            assert_eq!(
                greedy_engine(&c, &prompt, 8),
                greedy_reference(&c, &prompt, 8),
                "{text}"
            );
        }
    }
}

/// The layers of one section (q, k and v; gate and up) share their input, and those whose
/// kernels prepare it alike share that work: layers of different forms or knobs side by side
/// must each still get their own.
#[test]
fn mixed_forms_in_one_section_match_the_reference() {
    let (_d, base, vocab) = tiny_gqa();
    let rule = |pattern: &str, body: &str| format!("[[layers]]\nmatch = \"{pattern}\"\n{body}");
    let text = [
        rule("blk.*.attn_q", "[layers.shiftadd]\nbits = 3\ngroup = 16\n"),
        rule("blk.*.attn_k", "[layers.shiftadd]\nbits = 2\ngroup = 32\n"),
        rule("blk.*.attn_v", "[layers.rtn]\nbits = 3\ngroup = 16\n"),
        rule(
            "blk.*.ffn_gate",
            "[layers.rtn]\nbits = 4\ngroup = 32\nsymmetric = true\nint8_activations = true\n",
        ),
        rule(
            "blk.*.ffn_up",
            "[layers.rtn]\nbits = 8\ngroup = 32\nint8_activations = true\n",
        ),
    ]
    .concat();
    let c = compressed(&base, vocab, &text);
    let e = Engine::new(&c.transformer, EngineOptions::default()).unwrap();
    let forms: Vec<&str> = e.linears().map(|(_, l)| l.form()).collect();
    assert_eq!(
        &forms[..7],
        [
            "shiftadd", "shiftadd", "rtn", "dense", "rtn", "rtn", "dense"
        ]
    );
    // Both decode pools at 1 and 2 threads, and the many-row pass.
    assert_engine_matches(&c, &tokens(12, vocab), &text);
    let prompt = tokens(5, vocab);
    assert_eq!(
        greedy_engine(&c, &prompt, 8),
        greedy_reference(&c, &prompt, 8),
    );
}

/// With the KV cache in f16 each key and value is rounded to 11 significant bits; the logits
/// move by about that much, relative to the largest.
const F16_KV_TOLERANCE: f32 = 5e-3;

#[test]
fn an_f16_kv_cache_stays_within_its_rounding_and_decodes_the_same() {
    let spec = TinySpec::default();
    let (_d, m) = tiny(&spec);
    let toks = tokens(48, spec.vocab() as u32);
    assert_engine_matches_with(&m, &toks, KvType::F16, F16_KV_TOLERANCE, "f16 KV");
    let f16 = EngineOptions {
        kv: KvType::F16,
        ..EngineOptions::default()
    };
    let (e16, e32) = (
        Engine::new(&m.transformer, f16).unwrap(),
        Engine::new(&m.transformer, EngineOptions::default()).unwrap(),
    );
    let (mut half, mut exact) = (e16.decoder(), e32.decoder());
    let mut moved = 0f32;
    for &t in &toks {
        let got = half.step(t).unwrap().to_vec();
        let e32 = exact.step(t).unwrap();
        moved = got
            .iter()
            .zip(e32)
            .fold(moved, |a, (x, y)| a.max((x - y).abs()));
    }
    // The cache really holds f16: the logits differ from the f32 cache's somewhere.
    assert!(moved > 0.0, "f16 and f32 caches gave identical logits");
    let prompt = tokens(6, spec.vocab() as u32);
    assert_eq!(
        greedy_engine_with(&m, &prompt, 16, f16),
        greedy_reference(&m, &prompt, 16)
    );
}

#[test]
fn context_limit_is_an_error_and_bad_tokens_are_refused() {
    let (_d, m) = tiny(&TinySpec::default());
    let e = Engine::new(&m.transformer, EngineOptions::default()).unwrap();
    let ctx = e.context_length();
    let mut d = e.decoder();
    d.feed(&vec![3u32; ctx]).unwrap();
    let err = d.step(3).unwrap_err().to_string();
    assert!(err.contains("context length"), "{err}");
    let mut d = e.decoder();
    let err = d.step(1_000_000).unwrap_err().to_string();
    assert!(err.contains("vocabulary"), "{err}");
    let p = Prefill::kept(&e);
    let err = p.hidden(&vec![3u32; ctx + 1], 0).unwrap_err().to_string();
    assert!(err.contains("context length"), "{err}");
    let err = p.hidden(&[3, 1_000_000], 0).unwrap_err().to_string();
    assert!(err.contains("vocabulary"), "{err}");
    let err = p.hidden(&[3, 4], 2).unwrap_err().to_string();
    assert!(err.contains("no positions"), "{err}");
}

/// SmolLM2 (when present): the engine's greedy continuation equals the reference's token for
/// token, with an f32 and with an f16 KV cache.
#[test]
fn smollm2_greedy_continuations_are_identical() {
    let Some(path) = common::smollm2_file() else {
        return;
    };
    let m = Model::load(&path).unwrap();
    let prompt = m
        .tokenizer
        .encode("The quick brown fox jumps over the lazy dog. Then it", true)
        .unwrap();
    let reference = greedy_reference(&m, &prompt, 24);
    assert_eq!(greedy_engine(&m, &prompt, 24), reference);
    let f16 = EngineOptions {
        kv: KvType::F16,
        ..EngineOptions::default()
    };
    assert_eq!(
        greedy_engine_with(&m, &prompt, 24, f16),
        reference,
        "f16 KV"
    );
    let want = reference_logits(&m, &prompt[..6]);
    let e = Engine::new(&m.transformer, EngineOptions::default()).unwrap();
    let mut d = e.decoder();
    for (&t, w) in prompt.iter().zip(&want) {
        assert_close(d.step(t).unwrap(), w, TOLERANCE, "SmolLM2");
    }
}

/// At 600 positions (the vector attention's exponentials far below 0, partial chunks of 16)
/// the last position's logits still match the reference's, with an f32 and an f16 cache
/// (SmolLM2, when present).
#[test]
fn smollm2_long_context_attention_matches_the_reference() {
    let Some(path) = common::smollm2_file() else {
        return;
    };
    let m = Model::load(&path).unwrap();
    let sentence = m
        .tokenizer
        .encode(
            "The river town kept its records in a stone tower by the bridge. ",
            false,
        )
        .unwrap();
    let toks: Vec<u32> = sentence.iter().copied().cycle().take(600).collect();
    let want = m
        .transformer
        .forward(&toks, None, &mut NoHook, toks.len() - 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (kv, tolerance) in [(KvType::F32, TOLERANCE), (KvType::F16, F16_KV_TOLERANCE)] {
        let opts = EngineOptions {
            threads: 2,
            pool: PoolKind::Spin,
            kv,
        };
        let e = Engine::new(&m.transformer, opts).unwrap();
        let mut d = e.decoder();
        let got = d.feed(&toks).unwrap();
        assert_close(
            got,
            &want,
            tolerance,
            &format!("SmolLM2, 600 positions, {kv:?} cache"),
        );
    }
}
