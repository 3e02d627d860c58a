//! transformers' `CLIPTextModelWithProjection`: the text tower and its projection to the
//! joint space, as Stable Diffusion 3 (and SDXL) use their CLIP encoders.
//!
//! ```text
//! text_embeds = text_projection(pooler_output)        [B, P], no bias
//! penultimate = hidden_states[-2]                     [B, L, D] (before the final layer norm)
//! ```

use std::path::Path;

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

use super::text::{ClipTextConfig, ClipTextModel};
use crate::error::Result;

/// The text tower with its projection.
#[derive(Module, Debug)]
pub struct ClipTextModelWithProjection {
    /// The tower (`text_model.*`).
    pub text_model: ClipTextModel,
    /// `[D → P]`, no bias (`text_projection.weight`).
    pub text_projection: Linear,
}

/// What SD3 reads from a CLIP tower.
#[derive(Debug, Clone)]
pub struct ClipProjectedOutput {
    /// The penultimate hidden states `[B, L, D]`.
    pub penultimate: Tensor<3>,
    /// The final hidden states `[B, L, D]`.
    pub last_hidden_state: Tensor<3>,
    /// The projected pooled embedding `[B, P]`.
    pub text_embeds: Tensor<2>,
}

impl ClipTextModelWithProjection {
    /// Loads a `CLIPTextModelWithProjection` directory (`config.json` with `projection_dim`,
    /// `model.safetensors` with `text_model.*` and `text_projection.weight`).
    ///
    /// # Errors
    /// [`crate::ModelError::Checkpoint`] naming a missing or unfitting file;
    /// [`crate::ModelError::Config`] for an invalid config.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = Self::init_from_dir(dir, device)?;
        crate::hf::load_pytorch_safetensors(
            model,
            &dir.join("model.safetensors"),
            &[],
            &[r"position_ids$"],
        )
    }

    /// The tower of `dir/config.json` with fresh (lazily initialised) weights.
    ///
    /// # Errors
    /// As [`ClipTextModelWithProjection::load`], without the weights file.
    pub fn init_from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let config: ClipTextConfig = super::tower_config(dir, "text_config")?;
        Ok(Self {
            text_model: config.init(device)?,
            text_projection: LinearConfig::new(config.hidden_size, config.projection_dim)
                .with_bias(false)
                .init(device),
        })
    }

    /// Width `P` of the projected pooled embedding (`projection_dim`).
    pub fn projection_dim(&self) -> usize {
        self.text_projection.weight.dims()[1]
    }

    /// Encodes token ids.
    ///
    /// # Shapes
    /// - `input_ids`: `[B, L]`; outputs as [`ClipProjectedOutput`].
    ///
    /// # Panics
    /// As [`ClipTextModel::forward`].
    pub fn forward(&self, input_ids: Tensor<2, Int>) -> ClipProjectedOutput {
        let (out, mut hidden) = self.text_model.forward_with_hidden_states(input_ids);
        let penultimate = if hidden.len() >= 2 {
            hidden.swap_remove(hidden.len() - 2)
        } else {
            out.last_hidden_state.clone()
        };
        ClipProjectedOutput {
            penultimate,
            last_hidden_state: out.last_hidden_state,
            text_embeds: self.text_projection.forward(out.pooler_output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{fixtures_dir, max_relative_error, read_safetensors};

    /// SD3's two CLIP towers in miniature (`CLIPTextModelWithProjection`, quick-GELU and GELU;
    /// `scripts/make-sd3-fixtures.py`): penultimate and final hidden states and the projected
    /// pooled embedding match transformers, with each tower's own padding (end-of-text for
    /// the first, "!" for the second, as SD3's tokenizers pad).
    #[test]
    fn sd3_clip_towers_match_transformers() {
        let device = align_core::test_device();
        let dir = fixtures_dir().join("sd3-tiny");
        let r = read_safetensors(&dir.join("reference.safetensors")).unwrap();
        for (sub, tag, ids) in [
            ("text_encoder", "l", "clip3.input_ids"),
            ("text_encoder_2", "g", "clip3.input_ids_2"),
        ] {
            let model = ClipTextModelWithProjection::load(&dir.join(sub), &device).unwrap();
            let data = r[ids].clone();
            let shape = data.shape().to_vec();
            let values: Vec<i64> = data
                .try_to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as i64)
                .collect();
            let out = model.forward(Tensor::from_data(TensorData::new(values, shape), &device));
            for (name, t) in [
                ("penultimate", out.penultimate.into_data()),
                ("last_hidden_state", out.last_hidden_state.into_data()),
            ] {
                let err = max_relative_error(&t, &r[&format!("clip3.{tag}.{name}")]).unwrap();
                assert!(err < 1e-5, "{sub} {name}: {err}");
            }
            let err = max_relative_error(
                &out.text_embeds.into_data(),
                &r[&format!("clip3.{tag}.text_embeds")],
            )
            .unwrap();
            assert!(err < 1e-5, "{sub} text_embeds: {err}");
        }
    }
}
