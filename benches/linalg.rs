//! Dense linear algebra benchmark (`cargo bench --bench linalg`), side by side in one run:
//! - Cholesky of a GPTQ-sized Hessian: `linalg::cholesky_lower` (faer, in place on our row-major
//!   buffer) vs faer's `llt` on a copy (what the high-level API would cost);
//! - ridge leverage (flattening's channel scores) at MLP widths;
//! - the thin SVD of a merge-sized task vector: `technique::svd::thin_svd` (faer's bidiagonal
//!   SVD) vs the Gram-matrix route (faer's symmetric eigen of `AᵀA`), with the relative error
//!   of the smallest singular value of a matrix with known spectrum: the Gram route squares the
//!   condition number. The hand-written Jacobi SVD and blocked Cholesky these replaced were
//!   measured with an earlier version of this file; `experiments/RESULTS.md` has the numbers.
//!
//! Plain timing code: the median of a few runs, on all cores rayon sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use faer::{Mat, Side};
use reparam::linalg::cholesky_lower;
use reparam::rng::Rng;
use reparam::technique::flatten::ridge_leverage;
use reparam::technique::svd::{matmul, thin_svd, transpose};

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

fn uniform(n: usize, rng: &mut Rng) -> Vec<f64> {
    (0..n)
        .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5)
        .collect()
}

/// `XᵀX + 0.01·mean(diag) I` for a random `2n × n` X: an SPD matrix like a calibration Hessian.
fn spd(n: usize, rng: &mut Rng) -> Vec<f64> {
    let x = uniform(2 * n * n, rng);
    let mut g = matmul(&transpose(&x, 2 * n, n), n, 2 * n, &x, n).unwrap();
    let mean = (0..n).map(|i| g[i * n + i]).sum::<f64>() / n as f64;
    for i in 0..n {
        g[i * n + i] += 0.01 * mean;
    }
    g
}

fn faer_mat(a: &[f64], r: usize, c: usize) -> Mat<f64> {
    Mat::from_fn(r, c, |i, j| a[i * c + j])
}

/// Orthonormal `n × k` columns: the thin Q of a random matrix.
fn orthonormal(n: usize, k: usize, rng: &mut Rng) -> Vec<f64> {
    let a = faer_mat(&uniform(n * k, rng), n, k);
    let q = a.qr().compute_thin_Q();
    (0..n * k).map(|i| q[(i / k, i % k)]).collect()
}

fn main() {
    let mut rng = Rng::new(7);
    println!("Cholesky (lower, f64), ms: cholesky_lower | faer llt on a copy");
    for n in [576, 1536, 3072] {
        let a = spd(n, &mut rng);
        let ours = median_ms(|| {
            let mut m = a.clone();
            cholesky_lower(&mut m, n).unwrap();
        });
        let fm = faer_mat(&a, n, n);
        let theirs = median_ms(|| {
            fm.llt(Side::Lower).unwrap();
        });
        println!("  n={n:5}  {ours:9.2} | {theirs:9.2}");
    }

    println!("ridge leverage (flatten's channel scores), ms");
    for n in [576, 1536] {
        let a = spd(n, &mut rng);
        let ms = median_ms(|| {
            ridge_leverage(&a, n, 0.1).unwrap();
        });
        println!("  n={n:5}  {ms:9.2}");
    }

    println!(
        "thin SVD of a task vector, ms and relative error of the smallest singular value \
         (known spectrum 1 … 1e-5): thin_svd | Gram + eigen"
    );
    for (rows, cols) in [(192, 64), (576, 576), (1536, 576)] {
        let k = rows.min(cols);
        let u = orthonormal(rows, k, &mut rng);
        let v = orthonormal(cols, k, &mut rng);
        let s: Vec<f64> = (0..k)
            .map(|i| 10f64.powf(-5.0 * i as f64 / (k - 1) as f64))
            .collect();
        let us: Vec<f64> = (0..rows * k).map(|i| u[i] * s[i % k]).collect();
        let a = matmul(&us, rows, k, &transpose(&v, cols, k), cols).unwrap();
        let smin = s[k - 1];
        let mut ours_s = Vec::new();
        let ours = median_ms(|| ours_s = thin_svd(&a, rows, cols).unwrap().s);
        let rel = |s: &[f64]| {
            s.get(k - 1)
                .map_or(f64::INFINITY, |x| (x - smin).abs() / smin)
        };
        let ours_err = rel(&ours_s);
        let fm = faer_mat(&a, rows, cols);
        let mut gram_s = Vec::new();
        let gram = median_ms(|| {
            let g = fm.transpose() * &fm;
            let e = g.self_adjoint_eigenvalues(Side::Lower).unwrap();
            gram_s = e.iter().rev().map(|x| x.max(0.0).sqrt()).collect();
        });
        let gram_err = rel(&gram_s);
        println!(
            "  {rows:4}×{cols:<4}  {ours:9.2} ({ours_err:8.1e}) | {gram:9.2} ({gram_err:8.1e})"
        );
    }
}
