//! [`ShapesDataset`]: an endless, random-access dataset of rendered Shapes scenes.
//!
//! Item `i` is a pure function of `(seed, i)` (and the configuration and split): its
//! generator is `ChaCha8Rng::seed_from_u64(seed)` switched to stream `i`
//! (`set_stream(i)`), which first draws the scene from the chosen [`SplitPart`] with
//! [`Split::sample_spec`] and then renders it with [`render_scene`]. Items can therefore be
//! produced in any order, in parallel, and reproduced one at a time.

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::error::Result;
use crate::raster::Image;
use crate::render::{PlacedObject, render_scene};
use crate::split::{Split, SplitPart};
use crate::world::{SceneSpec, WorldConfig};

/// One item of a [`ShapesDataset`].
#[derive(Debug, Clone, PartialEq)]
pub struct ShapesSample {
    /// Its index in the dataset.
    pub index: u64,
    /// The scene it shows.
    pub spec: SceneSpec,
    /// The scene's canonical prompt.
    pub prompt: String,
    /// The rendered image.
    pub image: Image,
    /// The objects as placed.
    pub objects: Vec<PlacedObject>,
}

/// Rendered scenes of one part of a split, deterministic per `(seed, index)`.
#[derive(Debug, Clone)]
pub struct ShapesDataset {
    config: WorldConfig,
    split: Split,
    part: SplitPart,
    seed: u64,
}

impl ShapesDataset {
    /// A dataset over `part` of the standard split ([`Split::standard`]).
    pub fn new(config: WorldConfig, part: SplitPart, seed: u64) -> Result<Self> {
        Self::with_split(config, Split::standard(), part, seed)
    }

    /// A dataset over `part` of a custom split.
    pub fn with_split(
        config: WorldConfig,
        split: Split,
        part: SplitPart,
        seed: u64,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            split,
            part,
            seed,
        })
    }

    /// The world configuration.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// The split.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// The part of the split it draws from.
    pub fn part(&self) -> SplitPart {
        self.part
    }

    /// The dataset seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Item `index`. Fails only if placement fails ([`DataError::Placement`]), which the
    /// default configuration never does.
    ///
    /// [`DataError::Placement`]: crate::DataError::Placement
    pub fn get(&self, index: u64) -> Result<ShapesSample> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index);
        let spec = self.split.sample_spec(self.part, &mut rng);
        let scene = render_scene(&spec, &self.config, &mut rng)?;
        Ok(ShapesSample {
            index,
            prompt: spec.to_string(),
            spec,
            image: scene.image,
            objects: scene.objects,
        })
    }

    /// Items `start .. start + len`.
    pub fn batch(&self, start: u64, len: usize) -> Result<Vec<ShapesSample>> {
        (start..start.saturating_add(len as u64))
            .map(|i| self.get(i))
            .collect()
    }

    /// Items `0, 1, 2, …` (endless).
    pub fn iter(&self) -> impl Iterator<Item = Result<ShapesSample>> + '_ {
        (0..).map(|i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_pure_functions_of_seed_and_index() {
        let a = ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 7).unwrap();
        let b = ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 7).unwrap();
        let batch = a.batch(0, 20).unwrap();
        for i in (0..20).rev() {
            assert_eq!(b.get(i).unwrap(), batch[i as usize]);
        }
        let c = ShapesDataset::new(WorldConfig::default(), SplitPart::Train, 8).unwrap();
        assert_ne!(c.get(0).unwrap().image, batch[0].image);
        assert_ne!(batch[0].image, batch[1].image);
        assert_eq!(a.iter().nth(3).unwrap().unwrap(), batch[3]);
    }

    #[test]
    fn parts_are_respected() {
        for part in [SplitPart::Train, SplitPart::HeldOut] {
            let d = ShapesDataset::new(WorldConfig::default(), part, 1).unwrap();
            for s in d.batch(0, 100).unwrap() {
                assert_eq!(d.split().part(&s.spec), part);
                assert_eq!(s.prompt.parse::<SceneSpec>().unwrap(), s.spec);
            }
        }
    }
}
