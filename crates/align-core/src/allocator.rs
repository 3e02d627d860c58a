//! Tuning of the process's memory allocator for tensor workloads.
//!
//! burn's CPU backends allocate and free every activation. glibc's `malloc` gives the top of
//! its heap back to the kernel as soon as more than `M_TRIM_THRESHOLD` (128 KiB) is free there
//! and takes it again on the next allocation, so each step of a sampling loop or an update
//! page-faults its activations in afresh and the kernel zeroes every page. Keeping the memory
//! instead — a trim threshold of 2 GiB, 256 MiB of top padding on every heap extension and
//! the mmap threshold below — makes `align sample` with the shipped DiT take 0.744 of the time
//! and with the shipped UNet 0.943 on the project's machine, with about the same peak memory;
//! mimalloc as the global allocator gained 1.25× with twice the peak memory, jemalloc lost 9 %
//! (docs/benchmarks.md, "The allocator").
//!
//! Setting the trim threshold also switches off glibc's *dynamic* mmap threshold (which
//! otherwise rises to the size of the largest block freed, up to 32 MiB), leaving it at
//! 128 KiB: every activation above that size would then be a fresh `mmap`, faulted in and
//! zeroed page by page on each use — a flex `[16384, 96] × [96, 384]` linear layer took 23.9
//! instead of 13.2 ms that way. So the mmap threshold is set as well, to glibc's largest
//! (32 MiB on 64-bit targets): blocks below it come from the kept heap.
//!
//! A library never changes this for its user: the `align` binaries call [`tune_allocator`]
//! first thing in `main`, and a program built on the `align` crates gets the same speed by
//! doing the same (or, without code, by starting with
//! `MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=268435456 MALLOC_MMAP_THRESHOLD_=33554432`
//! in the environment).

/// glibc's `M_TRIM_THRESHOLD` set by [`tune_allocator`]: free memory at the top of the heap
/// that is kept rather than returned (2 GiB − 1, `mallopt`'s largest).
pub const TRIM_THRESHOLD: i32 = i32::MAX;

/// glibc's `M_TOP_PAD` set by [`tune_allocator`]: extra memory requested on every heap
/// extension (256 MiB).
pub const TOP_PAD: i32 = 256 << 20;

/// glibc's `M_MMAP_THRESHOLD` set by [`tune_allocator`]: blocks from this size up are
/// served by `mmap` (32 MiB, the largest glibc accepts on 64-bit targets).
pub const MMAP_THRESHOLD: i32 = 32 << 20;

/// What [`tune_allocator`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorTuning {
    /// glibc's trim threshold, top pad and mmap threshold were set to [`TRIM_THRESHOLD`],
    /// [`TOP_PAD`] and [`MMAP_THRESHOLD`].
    Glibc,
    /// Left alone: `ALIGN_MALLOC_TUNE=0`, or the user set `MALLOC_TRIM_THRESHOLD_`,
    /// `MALLOC_TOP_PAD_` or `MALLOC_MMAP_THRESHOLD_` themselves (glibc has applied those).
    LeftToUser,
    /// Not glibc (another C library, another operating system): nothing to tune.
    Unsupported,
}

impl std::fmt::Display for AllocatorTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Glibc => {
                "glibc malloc, trim threshold 2 GiB, top pad 256 MiB, mmap threshold 32 MiB"
            }
            Self::LeftToUser => "glibc malloc as configured by the environment",
            Self::Unsupported => "the system allocator",
        })
    }
}

/// Keeps freed memory in the process instead of returning it to the kernel (see the module
/// docs); call it first thing in `main`, before the first tensor. `ALIGN_MALLOC_TUNE=0`
/// turns it off (for A/B measurements); `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_` or
/// `MALLOC_MMAP_THRESHOLD_` in the environment take precedence.
pub fn tune_allocator() -> AllocatorTuning {
    let env_set = |k: &str| std::env::var_os(k).is_some();
    if std::env::var_os("ALIGN_MALLOC_TUNE").is_some_and(|v| v == "0")
        || env_set("MALLOC_TRIM_THRESHOLD_")
        || env_set("MALLOC_TOP_PAD_")
        || env_set("MALLOC_MMAP_THRESHOLD_")
    {
        return AllocatorTuning::LeftToUser;
    }
    glibc::tune()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use super::{AllocatorTuning, MMAP_THRESHOLD, TOP_PAD, TRIM_THRESHOLD};

    /// `mallopt(M_TRIM_THRESHOLD)`, `mallopt(M_TOP_PAD)` and `mallopt(M_MMAP_THRESHOLD)`.
    #[allow(unsafe_code)]
    pub(super) fn tune() -> AllocatorTuning {
        // SAFETY: `mallopt` only changes glibc's malloc parameters under its own lock; it
        // reads no memory of ours and is valid to call at any time. All three values are within
        // the ranges glibc accepts (it returns 0 for a rejected one, checked below).
        let ok = unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                && libc::mallopt(libc::M_TOP_PAD, TOP_PAD) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        };
        if ok {
            AllocatorTuning::Glibc
        } else {
            AllocatorTuning::Unsupported
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    use super::AllocatorTuning;

    pub(super) fn tune() -> AllocatorTuning {
        AllocatorTuning::Unsupported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On this project's platform (Linux, glibc) the parameters are accepted; the result names
    /// itself.
    #[test]
    fn glibc_accepts_the_parameters() {
        let t = tune_allocator();
        if cfg!(all(target_os = "linux", target_env = "gnu"))
            && std::env::var_os("ALIGN_MALLOC_TUNE").is_none()
            && std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none()
            && std::env::var_os("MALLOC_TOP_PAD_").is_none()
            && std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        {
            assert_eq!(t, AllocatorTuning::Glibc);
        }
        assert!(!t.to_string().is_empty());
        // Allocating and freeing after the change still works.
        let v = vec![1.0f32; 1 << 22];
        assert_eq!(v.iter().sum::<f32>(), (1u32 << 22) as f32);
    }
}
