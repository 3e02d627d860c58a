//! Every loader, damaged every way, in CI: no panic, every error names its file, no
//! allocation of a declared-but-absent size. (The full campaign: `cargo run --release -p
//! align-fuzz`; docs/reliability.md.)
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use proptest::prelude::*;

#[global_allocator]
static ALLOCATOR: align_fuzz::TrackingAllocator = align_fuzz::TrackingAllocator;

fn work(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("align-fuzz-test-{name}-{}", std::process::id()))
}

/// The allocation peak is global to the process: the tests here run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn each_loader_refuses_each_fault_class_with_its_file_named_and_never_panics() {
    let _serial = serial();
    let dir = work("campaign");
    let targets = align_fuzz::targets(&dir).unwrap();
    let mut failures = Vec::new();
    let mut total = 0;
    for t in &targets {
        for row in align_fuzz::run_target(t, &dir, 12, 26) {
            total += row.cases;
            if row.panics + row.unnamed + row.oversized > 0 {
                failures.push(format!(
                    "{} / {}: {} panics ({:?}), {} unnamed ({:?}), {} oversized (largest {} B)",
                    row.target,
                    row.fault.name(),
                    row.panics,
                    row.first_panic,
                    row.unnamed,
                    row.first_unnamed,
                    row.oversized,
                    row.largest_allocation
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(total > 1000, "{total} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn damage_is_caught_at_all() {
    // The harness itself: a loader that panics, one whose error does not name the file and
    // one that allocates far beyond its input are each reported.
    let _serial = serial();
    let dir = work("harness");
    let target = |load: align_fuzz::Loader| align_fuzz::Target {
        name: "probe",
        files: vec!["x.bin"],
        seeds: vec![vec![b"seed".to_vec()]],
        fixture: vec![],
        faults: vec![align_fuzz::Fault::BitFlips],
        load,
        names: vec!["x.bin"],
    };
    let panics = target(Box::new(|_| panic!("boom")));
    assert_eq!(align_fuzz::run_target(&panics, &dir, 3, 0)[0].panics, 3);
    let unnamed = target(Box::new(|_| Err("bad input".into())));
    assert_eq!(align_fuzz::run_target(&unnamed, &dir, 3, 0)[0].unnamed, 3);
    let big = target(Box::new(|_| {
        let v = vec![1u8; 200 << 20];
        std::hint::black_box(&v);
        Ok(())
    }));
    assert_eq!(align_fuzz::run_target(&big, &dir, 2, 0)[0].oversized, 2);
    let fine = target(Box::new(|d| {
        std::fs::read(d.join("x.bin"))
            .map(|_| ())
            .map_err(|e| format!("x.bin: {e}"))
    }));
    let row = &align_fuzz::run_target(&fine, &dir, 3, 0)[0];
    assert_eq!(
        (row.accepted, row.panics, row.unnamed, row.oversized),
        (3, 0, 0, 0)
    );
    // Whatever bytes an error quotes, the table keeps one line per row.
    let noisy = target(Box::new(|_| {
        Err("x.bin: a\nb\r\u{2028}c|d\u{0}\u{85}".into())
    }));
    let table = align_fuzz::markdown(&align_fuzz::run_target(&noisy, &dir, 1, 0));
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.contains("a\\nb\\r\\u{2028}c\\|d"), "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Arbitrary bytes in place of each loader's file.
    #[test]
    fn arbitrary_bytes_in_any_loaders_file_are_refused_cleanly(
        which in 0usize..64,
        file in 0usize..8,
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _serial = serial();
        let dir = work("proptest");
        let targets = align_fuzz::targets(&dir).unwrap();
        let t = &targets[which % targets.len()];
        let r = align_fuzz::check_bytes(t, &dir, file, &bytes);
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}
