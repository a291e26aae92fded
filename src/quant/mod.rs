//! The numerical core of ShiftAddLLM quantization, over plain row-major `f32` matrices (no
//! tensors, no model): power-of-two scales (`apot`), the per-group binary-coding solver
//! (`bcq`), the GPTQ-style sweep with error feedback and the RTN baseline (`gptq`), and the
//! packed inference form with its LUT kernel (`lut`). Spec: `docs/techniques.md`, "Shift-add
//! quantization (ShiftAddLLM)"; tests cite its numbered list as "Shift-add property N".

pub mod act8;
pub mod apot;
pub mod bcq;
pub mod gptq;
pub mod lut;
pub mod rtn;
