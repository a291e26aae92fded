//! Shift-add quantization of one linear layer (ShiftAddLLM: binary planes with power-of-two
//! scales, BCQ inside a GPTQ sweep), and the RTN baseline, turning a dense layer and its
//! calibration statistics into a compressed [`LinearWeight`]. Also the per-layer sensitivity
//! score that drives mixed-bit allocation.

use std::sync::Arc;

use crate::calib::InputStats;
use crate::model::LinearWeight;
use crate::quant::bcq::BcqOptions;
use crate::quant::gptq::{ScaleLayout, SweepOptions, inverse_factor_diag, quantize_matrix_on};
use crate::quant::lut::BcqPacked;
use crate::quant::rtn::rtn_quantize;
use crate::technique::recipe::{Quant, ScaleLayoutKnob, ShiftAddKnobs};

/// Diagonal damping of the calibration Hessian, as a fraction of its mean diagonal (GPTQ's 1 %).
pub const DAMP: f64 = 0.01;
/// Columns per lazy-update block of the sweep.
const SWEEP_BLOCK: usize = 128;

fn dense_f32(weight: &LinearWeight) -> anyhow::Result<(Vec<f32>, usize, usize)> {
    let (rows, cols) = weight.shape();
    let w = weight.to_dense()?.flatten_all()?.to_vec1::<f32>()?;
    Ok((w, rows, cols))
}

/// The packed scale layout the knobs ask for.
pub fn scale_layout(k: &ShiftAddKnobs) -> ScaleLayout {
    match k.layout {
        ScaleLayoutKnob::Block => ScaleLayout::Block { group: k.group },
        ScaleLayoutKnob::Column => ScaleLayout::Column {
            group_rows: k.group,
        },
    }
}

fn sweep_options(k: &ShiftAddKnobs) -> SweepOptions {
    SweepOptions {
        bcq: BcqOptions {
            bits: k.bits,
            rounds: k.rounds,
            apot_terms: k.apot_terms,
        },
        layout: scale_layout(k),
        error_feedback: k.error_feedback,
        damp: DAMP,
        act_order: k.act_order,
        block_size: SWEEP_BLOCK,
    }
}

/// Compresses one dense layer. `stats` (the layer's input statistics) is required when the
/// technique uses error feedback.
pub fn compress_linear(
    weight: &LinearWeight,
    technique: &Quant,
    stats: Option<&InputStats>,
) -> anyhow::Result<LinearWeight> {
    let (w, rows, cols) = dense_f32(weight)?;
    let bias = weight.bias().cloned();
    match technique {
        Quant::F16 => Ok(LinearWeight::Dense {
            weight: candle_core::Tensor::from_vec(w, (rows, cols), &weight.device())?
                .to_dtype(candle_core::DType::F16)?,
            bias,
        }),
        Quant::Rtn(k) => {
            let q = rtn_quantize(&w, rows, cols, k.bits, k.group, k.rule());
            Ok(LinearWeight::Rtn {
                dequantized: candle_core::Tensor::from_vec(q, (rows, cols), &weight.device())?,
                bits: k.bits,
                group: k.group,
                symmetric: k.symmetric,
                float_min: k.float_min,
                int8_activations: k.int8_activations,
                bias,
            })
        }
        Quant::ShiftAdd(k) => {
            let h = match (k.error_feedback, stats) {
                (false, _) => None,
                (true, Some(s)) if s.in_features == cols && !s.xtx.is_empty() => Some(&s.xtx[..]),
                (true, _) => anyhow::bail!(
                    "error feedback needs calibration statistics of this layer's input"
                ),
            };
            // The sweep's matrix products run where the layer lives (a GPU in a GPU run).
            let q = quantize_matrix_on(&w, rows, cols, h, &sweep_options(k), &weight.device())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(LinearWeight::Bcq {
                packed: Arc::new(BcqPacked::from_quantized(&q)),
                bias,
            })
        }
    }
}

/// ShiftAddLLM's sensitivity score `‖IS‖_F · std(IS)²` with `IS[:, k] = W[:, k] / U_kk`,
/// `H⁻¹ = UᵀU` (`docs/techniques.md`, Shift-add §5): large for layers with large and outlying
/// saliencies.
pub fn sensitivity(weight: &LinearWeight, stats: &InputStats) -> anyhow::Result<f64> {
    let (w, rows, cols) = dense_f32(weight)?;
    anyhow::ensure!(
        stats.in_features == cols,
        "statistics are for {} inputs, the layer has {cols}",
        stats.in_features
    );
    let d = inverse_factor_diag(&stats.xtx, cols, DAMP).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = (rows * cols) as f64;
    let (mut sum, mut sq) = (0.0f64, 0.0f64);
    for r in 0..rows {
        for (c, dc) in d.iter().enumerate() {
            let v = f64::from(w[r * cols + c]) / dc;
            sum += v;
            sq += v * v;
        }
    }
    let mean = sum / n;
    let var = (sq - n * mean * mean) / (n - 1.0).max(1.0);
    Ok(sq.sqrt() * var)
}
