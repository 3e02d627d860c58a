//! Stable Diffusion 3's prompt embeddings from its three text towers, as diffusers'
//! `StableDiffusion3Pipeline.encode_prompt` builds them:
//!
//! ```text
//! clip    = [penultimate_L ‖ penultimate_G]            on channels    [B, 77, D_L + D_G]
//! clip    = zero-pad the channels to the T5 width W                   [B, 77, W]
//! tokens  = [clip ; T5 last hidden states]             on the sequence [B, 77 + L_T5, W]
//! pooled  = [text_embeds_L ‖ text_embeds_G]                            [B, P_L + P_G]
//! ```
//!
//! Without the T5 tower (SD3 supports dropping it, the practical choice on small GPUs) its
//! part is zeros of `[B, L_T5, W]`, as diffusers returns when `text_encoder_3` is `None`.

use align_core::Condition;
use burn::prelude::*;

use crate::clip::ClipProjectedOutput;
use crate::error::{ModelError, Result};

/// The T5 part of the prompt: the encoder's last hidden states, or its shape when the tower
/// is dropped.
#[derive(Debug, Clone)]
pub enum T5Part {
    /// `[B, L_T5, W]` hidden states.
    Encoded(Box<Tensor<3>>),
    /// No T5 tower: zeros of `tokens × width` (SD3: 256 × 4096, the MMDiT's
    /// `joint_attention_dim`).
    Dropped {
        /// Sequence length (the pipeline's `max_sequence_length`).
        tokens: usize,
        /// Width (`joint_attention_dim`).
        width: usize,
    },
}

/// The MMDiT's condition: joint text tokens and the pooled embedding (see the module docs).
///
/// # Errors
/// [`ModelError::Input`] if the two CLIP outputs differ in batch or length, or their joint
/// width exceeds the T5 width.
pub fn sd3_condition(
    clip_l: &ClipProjectedOutput,
    clip_g: &ClipProjectedOutput,
    t5: T5Part,
) -> Result<Condition> {
    let [b, l, dl] = clip_l.penultimate.dims();
    let [b2, l2, dg] = clip_g.penultimate.dims();
    if (b, l) != (b2, l2) {
        return Err(ModelError::Input {
            what: "CLIP-G hidden states".into(),
            expected: format!("[{b}, {l}, ·] like CLIP-L's"),
            got: format!("[{b2}, {l2}, ·]"),
        });
    }
    let device = clip_l.penultimate.device();
    let t5 = match t5 {
        T5Part::Encoded(t) => *t,
        T5Part::Dropped { tokens, width } => Tensor::zeros([b, tokens, width], &device),
    };
    let [bt, _, width] = t5.dims();
    if bt != b || dl + dg > width {
        return Err(ModelError::Input {
            what: "T5 hidden states".into(),
            expected: format!("[{b}, ·, ≥ {}]", dl + dg),
            got: format!("{:?}", t5.dims()),
        });
    }
    let mut parts = vec![clip_l.penultimate.clone(), clip_g.penultimate.clone()];
    if width > dl + dg {
        parts.push(Tensor::zeros([b, l, width - dl - dg], &device));
    }
    let clip = Tensor::cat(parts, 2);
    let tokens = Tensor::cat(vec![clip, t5], 1);
    let pooled = Tensor::cat(
        vec![clip_l.text_embeds.clone(), clip_g.text_embeds.clone()],
        1,
    );
    Condition::new(tokens)
        .with_pooled(pooled)
        .map_err(|e| ModelError::Input {
            what: "pooled embeddings".into(),
            expected: "one row per prompt".into(),
            got: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(b: usize, l: usize, d: usize, p: usize, v: f32, device: &Device) -> ClipProjectedOutput {
        ClipProjectedOutput {
            penultimate: Tensor::full([b, l, d], v, device),
            last_hidden_state: Tensor::zeros([b, l, d], device),
            text_embeds: Tensor::full([b, p], v + 0.5, device),
        }
    }

    /// Every element lands where diffusers puts it: CLIP-L then CLIP-G channels, zeros up to
    /// the T5 width, the T5 tokens after the 77 CLIP positions; pooled L then G.
    #[test]
    fn the_three_towers_are_placed_as_diffusers_places_them() {
        let device = align_core::test_device();
        let (l, g) = (out(2, 3, 2, 1, 1.0, &device), out(2, 3, 3, 2, 2.0, &device));
        let t5 = Tensor::<3>::full([2, 4, 8], 3.0, &device);
        let c = sd3_condition(&l, &g, T5Part::Encoded(Box::new(t5))).unwrap();
        assert_eq!(c.context.dims(), [2, 7, 8]);
        let v = c.context.clone().into_data().try_to_vec::<f32>().unwrap();
        for bi in 0..2 {
            for pos in 0..7 {
                for ch in 0..8 {
                    let expected = if pos >= 3 {
                        3.0
                    } else if ch < 2 {
                        1.0
                    } else if ch < 5 {
                        2.0
                    } else {
                        0.0
                    };
                    assert_eq!(v[(bi * 7 + pos) * 8 + ch], expected, "{bi} {pos} {ch}");
                }
            }
        }
        let pooled = c.pooled.unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(pooled, vec![1.5, 2.5, 2.5, 1.5, 2.5, 2.5]);
        // Without T5: zeros of the given shape.
        let c = sd3_condition(
            &l,
            &g,
            T5Part::Dropped {
                tokens: 4,
                width: 8,
            },
        )
        .unwrap();
        let v = c.context.into_data().try_to_vec::<f32>().unwrap();
        assert!(v[3 * 8..7 * 8].iter().all(|&x| x == 0.0));
        // Mismatches are refused.
        let short = out(2, 4, 3, 2, 2.0, &device);
        assert!(
            sd3_condition(
                &l,
                &short,
                T5Part::Dropped {
                    tokens: 4,
                    width: 8
                }
            )
            .is_err()
        );
        assert!(
            sd3_condition(
                &l,
                &g,
                T5Part::Dropped {
                    tokens: 4,
                    width: 4
                }
            )
            .is_err()
        );
    }
}
