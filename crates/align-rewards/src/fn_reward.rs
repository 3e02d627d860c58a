//! A reward from a closure: the quickest way to bring one's own scoring function (TRL's
//! `reward_fn`), with the [`Reward`] contract checked around it.

use burn::prelude::*;

use crate::error::{Result, RewardError};
use crate::reward::{Reward, check_batch, read_scores};

/// A [`Reward`] whose score is `f(images, prompts)`: one score per image from a `[B]` tensor,
/// computed with tensor operations (so it is differentiable too: gradients reach the pixels
/// through `f`).
///
/// The batch contract ([`check_batch`]) is checked before `f` runs; after it, that there is
/// one finite score per image.
pub struct FnReward<F> {
    name: String,
    scale: String,
    f: F,
}

/// A reward named `name` with native range `scale` from `f: (images [B, 3, H, W] in
/// `[−1, 1]`, prompts) → scores [B]`.
pub fn reward_fn<F>(name: impl Into<String>, scale: impl Into<String>, f: F) -> FnReward<F>
where
    F: Fn(Tensor<4>, &[String]) -> Tensor<1>,
{
    FnReward {
        name: name.into(),
        scale: scale.into(),
        f,
    }
}

impl<F: Fn(Tensor<4>, &[String]) -> Tensor<1>> Reward for FnReward<F> {
    fn name(&self) -> &str {
        &self.name
    }

    fn scale(&self) -> &str {
        &self.scale
    }

    fn score(&self, images: &Tensor<4>, prompts: &[String]) -> Result<Vec<f64>> {
        let [b, ..] = check_batch(&self.name, images, prompts)?;
        let scores = read_scores(&self.name, (self.f)(images.clone(), prompts))?;
        if scores.len() != b {
            return Err(RewardError::shape(
                format!("scores of `{}`", self.name),
                format!("[{b}]"),
                format!("[{}]", scores.len()),
            ));
        }
        Ok(scores)
    }

    fn score_differentiable(
        &self,
        images: Tensor<4>,
        prompts: &[String],
    ) -> Option<Result<Tensor<1>>> {
        Some(check_batch(&self.name, &images, prompts).map(|_| (self.f)(images, prompts)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_checks_and_gradients_pass_through_the_closure() {
        let device = align_core::test_device().autodiff();
        let mean = reward_fn("mean", "[-1, 1]", |x: Tensor<4>, _: &[String]| {
            let b = x.dims()[0];
            x.reshape([b as i32, -1]).mean_dim(1).reshape([b])
        });
        let x = Tensor::<4>::from_floats(
            [[[[0.5]], [[0.0]], [[-0.2]]], [[[1.0]], [[1.0]], [[1.0]]]],
            &device,
        )
        .require_grad();
        let p = vec!["a".to_string(), "b".to_string()];
        let s = mean.score(&x, &p).unwrap();
        assert!(
            (s[0] - 0.1).abs() < 1e-6 && (s[1] - 1.0).abs() < 1e-6,
            "{s:?}"
        );
        assert_eq!((mean.name(), mean.scale()), ("mean", "[-1, 1]"));
        // d(mean)/dx = 1/3 for every pixel of its own image.
        let g = mean
            .score_differentiable(x.clone(), &p)
            .unwrap()
            .unwrap()
            .sum()
            .backward();
        let grad = x.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert!(
            grad.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6),
            "{grad:?}"
        );
        // The batch contract and finiteness are checked around the closure.
        assert!(mean.score(&x, &p[..1]).is_err());
        let one = reward_fn("one", "-", |_: Tensor<4>, _: &[String]| {
            Tensor::<1>::from_floats([1.0], &align_core::test_device())
        });
        assert!(one.score(&x, &p).unwrap_err().to_string().contains("[2]"));
        let nan = reward_fn("nan", "-", |x: Tensor<4>, _: &[String]| {
            x.reshape([2, -1])
                .sum_dim(1)
                .reshape([2])
                .div_scalar(0.0)
                .mul_scalar(0.0)
        });
        assert!(nan.score(&x, &p).unwrap_err().to_string().contains("nan"));
    }
}
