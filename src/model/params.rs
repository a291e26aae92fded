//! A transformer's parameters addressed one by one, so code that works on whole models
//! (merging, task-vector statistics) can read and replace any of them without knowing the
//! layout of blocks and linears.

use candle_core::{DType, Tensor};

use crate::model::{LinearId, LinearKind, LinearWeight, Transformer};

/// One parameter of a Llama transformer, addressed so it can be read and replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Embedding,
    OutputNorm,
    /// The LM head when it is not tied to the embedding. A linear like the blocks', so OPCM
    /// projects it too; a tied head is the embedding, which it adds.
    Output,
    AttnNorm(usize),
    FfnNorm(usize),
    /// A block linear's weight matrix (OPCM projects it).
    Linear(LinearId),
    Bias(LinearId),
}

/// Every parameter of `t`, in a fixed order.
pub fn params(t: &Transformer) -> Vec<Param> {
    let mut out = vec![Param::Embedding, Param::OutputNorm];
    if !t.config.tie_word_embeddings {
        out.push(Param::Output);
    }
    for (b, block) in t.blocks.iter().enumerate() {
        out.push(Param::AttnNorm(b));
        out.push(Param::FfnNorm(b));
        for kind in LinearKind::ALL {
            let id = LinearId::new(b, kind);
            out.push(Param::Linear(id));
            if block.linear(kind).bias().is_some() {
                out.push(Param::Bias(id));
            }
        }
    }
    out
}

/// Reads a parameter as a dense tensor (a compressed linear is decompressed).
pub fn get(t: &Transformer, p: Param) -> anyhow::Result<Tensor> {
    let linear = |id: LinearId| -> anyhow::Result<&LinearWeight> {
        t.linear(id)
            .ok_or_else(|| anyhow::anyhow!("{id}: no such layer"))
    };
    Ok(match p {
        Param::Embedding => t.token_embd.clone(),
        Param::OutputNorm => t.output_norm.clone(),
        Param::Output => t.output.to_dense()?,
        Param::AttnNorm(b) => t.blocks[b].attn_norm.clone(),
        Param::FfnNorm(b) => t.blocks[b].ffn_norm.clone(),
        Param::Linear(id) => linear(id)?.to_dense()?,
        Param::Bias(id) => linear(id)?
            .bias()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{id}: no bias"))?,
    })
}

/// Replaces a parameter with a dense tensor (a tied head follows the embedding).
pub fn set(t: &mut Transformer, p: Param, v: Tensor) {
    match p {
        Param::Embedding => t.token_embd = v,
        Param::OutputNorm => t.output_norm = v,
        Param::Output => t.output = LinearWeight::dense(v, None),
        Param::AttnNorm(b) => t.blocks[b].attn_norm = v,
        Param::FfnNorm(b) => t.blocks[b].ffn_norm = v,
        Param::Linear(id) => {
            let w = t.blocks[id.block].linear_mut(id.kind);
            *w = LinearWeight::dense(v, w.bias().cloned());
        }
        Param::Bias(id) => {
            let w = t.blocks[id.block].linear_mut(id.kind);
            if let Ok(weight) = w.to_dense() {
                *w = LinearWeight::dense(weight, Some(v));
            }
        }
    }
    if t.config.tie_word_embeddings && p == Param::Embedding {
        t.output = LinearWeight::dense(t.token_embd.clone(), None);
    }
}

/// A tensor's values as f32, flattened.
pub fn values(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Checks that `model` has `base`'s architecture, which merging or comparing them needs: the
/// same configuration and parameter shapes.
pub fn check_same_architecture(base: &Transformer, model: &Transformer) -> anyhow::Result<()> {
    let (a, b) = (&base.config, &model.config);
    let fields = [
        ("vocab_size", a.vocab_size, b.vocab_size),
        ("hidden_size", a.hidden_size, b.hidden_size),
        (
            "intermediate_size",
            a.intermediate_size,
            b.intermediate_size,
        ),
        ("num_layers", a.num_layers, b.num_layers),
        ("num_heads", a.num_heads, b.num_heads),
        ("num_kv_heads", a.num_kv_heads, b.num_kv_heads),
        ("head_dim", a.head_dim, b.head_dim),
        (
            "tie_word_embeddings",
            usize::from(a.tie_word_embeddings),
            usize::from(b.tie_word_embeddings),
        ),
    ];
    for (name, x, y) in fields {
        anyhow::ensure!(
            x == y,
            "not the base's architecture: {name} is {y}, the base has {x}"
        );
    }
    anyhow::ensure!(
        a.architecture == b.architecture && base.blocks.len() == model.blocks.len(),
        "not the base's architecture: {:?} with {} blocks, the base is {:?} with {}",
        b.architecture,
        model.blocks.len(),
        a.architecture,
        base.blocks.len()
    );
    for p in params(base) {
        let (x, y) = (get(base, p)?, get(model, p));
        let Ok(y) = y else {
            anyhow::bail!("not the base's architecture: {p:?} is missing");
        };
        anyhow::ensure!(
            x.dims() == y.dims(),
            "not the base's architecture: {p:?} has shape {:?}, the base has {:?}",
            y.dims(),
            x.dims()
        );
    }
    Ok(())
}

/// The inner products `⟨θ_i − θ₀, θ_j − θ₀⟩` of the models' task vectors over all parameters
/// (tied embeddings counted once): norms on the diagonal, and how much two fine-tunes move the
/// same weights off it (what a merge has to reconcile).
pub fn task_vector_gram(
    base: &Transformer,
    models: &[&Transformer],
) -> anyhow::Result<Vec<Vec<f64>>> {
    for m in models {
        check_same_architecture(base, m)?;
    }
    let n = models.len();
    let mut gram = vec![vec![0.0; n]; n];
    for p in params(base) {
        let b = values(&get(base, p)?)?;
        let taus = models
            .iter()
            .map(|m| {
                let x = values(&get(m, p)?)?;
                Ok(x.iter().zip(&b).map(|(a, c)| f64::from(a - c)).collect())
            })
            .collect::<anyhow::Result<Vec<Vec<f64>>>>()?;
        for i in 0..n {
            for j in i..n {
                let d: f64 = taus[i].iter().zip(&taus[j]).map(|(a, c)| a * c).sum();
                gram[i][j] += d;
                if j != i {
                    gram[j][i] += d;
                }
            }
        }
    }
    Ok(gram)
}
