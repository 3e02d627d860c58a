//! The fault classes and the mutators that produce them from a valid seed.
//!
//! Generic classes apply to any bytes (truncation, bit flips, spliced garbage, arbitrary
//! bytes, an empty file); structured ones know the format (a TOML/JSON field given a value of
//! the wrong type or range, a safetensors header with the wrong dtype, shape or a huge
//! declared size, a PNG declaring huge dimensions) so that the input gets past the first parse
//! and reaches the checks behind it.

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

/// A class of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// The valid file cut short at a random length.
    Truncated,
    /// One to eight random bits of the valid file flipped.
    BitFlips,
    /// A random stretch of the valid file overwritten, inserted or repeated.
    Spliced,
    /// Random bytes (half of the cases printable ASCII), up to 1 KiB.
    ArbitraryBytes,
    /// An empty file.
    Empty,
    /// TOML / JSON / JSONL: one field given a value of another type or out of range (NaN,
    /// ±∞, −1, 0, `i64::MAX`, a path that leaves the directory, …), removed, or an unknown
    /// field added.
    BadField,
    /// safetensors: the header JSON broken (its length prefix kept consistent).
    HeaderJson,
    /// safetensors: a tensor declared with another dtype.
    WrongDtype,
    /// safetensors: a tensor declared with another shape.
    WrongShape,
    /// safetensors: a huge header length, huge or reversed data offsets, or a shape whose
    /// element count overflows; PNG: huge (or zero) declared dimensions.
    HugeSize,
    /// Checkpoint directory: one of its files deleted.
    MissingFile,
    /// Checkpoint directory: `LATEST` naming a checkpoint that does not exist, or garbage.
    LatestNowhere,
}

impl Fault {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Truncated => "truncated",
            Fault::BitFlips => "bit flips",
            Fault::Spliced => "spliced garbage",
            Fault::ArbitraryBytes => "arbitrary bytes",
            Fault::Empty => "empty",
            Fault::BadField => "bad field",
            Fault::HeaderJson => "bad header JSON",
            Fault::WrongDtype => "wrong dtype",
            Fault::WrongShape => "wrong shape",
            Fault::HugeSize => "huge declared size",
            Fault::MissingFile => "missing file",
            Fault::LatestNowhere => "LATEST pointing nowhere",
        }
    }
}

/// `0..n` (n > 0).
pub fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// `seed` cut at a random length shorter than it.
pub fn truncate(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    seed[..below(rng, seed.len())].to_vec()
}

/// `seed` with 1–8 random bits flipped.
pub fn flip_bits(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    if out.is_empty() {
        return vec![rng.next_u32() as u8];
    }
    for _ in 0..1 + below(rng, 8) {
        let i = below(rng, out.len());
        out[i] ^= 1 << below(rng, 8);
    }
    out
}

/// `seed` with a random stretch overwritten with random bytes, random bytes inserted, or a
/// stretch repeated.
pub fn splice(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    let at = below(rng, out.len() + 1);
    let len = 1 + below(rng, 64);
    let mut junk = vec![0u8; len];
    rng.fill_bytes(&mut junk);
    match below(rng, 3) {
        0 => {
            for (k, b) in junk.into_iter().enumerate() {
                if let Some(slot) = out.get_mut(at + k) {
                    *slot = b;
                }
            }
        }
        1 => {
            out.splice(at..at, junk);
        }
        _ => {
            let end = (at + len).min(out.len());
            let chunk = out[at..end].to_vec();
            out.splice(at..at, chunk);
        }
    }
    out
}

/// Up to 1 KiB of random bytes; half of the time printable ASCII with line breaks.
pub fn arbitrary(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let len = below(rng, 1025);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    if rng.next_u32().is_multiple_of(2) {
        for b in &mut out {
            *b = match *b % 20 {
                0 => b'\n',
                1 => b'"',
                2 => b'=',
                _ => b' ' + (*b % 95),
            };
        }
    }
    out
}

/// Values of the wrong type or range for a TOML or JSON field.
fn bad_json_value(rng: &mut ChaCha8Rng) -> serde_json::Value {
    use serde_json::json;
    let choices = [
        json!("x"),
        json!(""),
        json!(-1),
        json!(0),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(-1.0e300),
        json!(1.0e300),
        json!(0.5),
        json!(true),
        json!([]),
        json!([1, 2, 3]),
        json!({}),
        json!({"nested": 1}),
        json!("../../../../etc/passwd"),
        json!("/etc/passwd"),
        json!("a\u{0}b"),
        json!("x".repeat(1000)),
        serde_json::Value::Null,
    ];
    choices[below(rng, choices.len())].clone()
}

/// Every path to a leaf of a JSON value (object keys and array indices).
fn leaves(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                path.push(k.clone());
                leaves(c, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(a) if !a.is_empty() => {
            for (i, c) in a.iter().enumerate() {
                path.push(i.to_string());
                leaves(c, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn at_path<'a>(v: &'a mut serde_json::Value, path: &[String]) -> Option<&'a mut serde_json::Value> {
    let mut cur = v;
    for p in path {
        cur = match cur {
            serde_json::Value::Object(m) => m.get_mut(p)?,
            serde_json::Value::Array(a) => a.get_mut(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A JSON document with one leaf replaced by a bad value, removed, or an unknown field added.
pub fn bad_field_json(value: &serde_json::Value, rng: &mut ChaCha8Rng) -> serde_json::Value {
    let mut v = value.clone();
    let mut paths = Vec::new();
    leaves(&v, &mut Vec::new(), &mut paths);
    let path = paths[below(rng, paths.len())].clone();
    match below(rng, 6) {
        0 if !path.is_empty() => {
            let (last, parent) = path.split_last().unwrap_or((&path[0], &[]));
            if let Some(serde_json::Value::Object(m)) = at_path(&mut v, parent) {
                m.remove(last);
            }
        }
        1 => {
            let parent = &path[..path.len().saturating_sub(1)];
            if let Some(serde_json::Value::Object(m)) = at_path(&mut v, parent) {
                m.insert("no_such_field".into(), serde_json::json!(1));
            }
        }
        _ => {
            let bad = bad_json_value(rng);
            if let Some(slot) = at_path(&mut v, &path) {
                *slot = bad;
            }
        }
    }
    v
}

/// A TOML file with one field given a bad value, removed, or an unknown field added (the
/// seed itself when it does not parse).
pub fn bad_field_toml(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let Some(table) = std::str::from_utf8(seed)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(t).ok())
    else {
        return seed.to_vec();
    };
    let Ok(json) = serde_json::to_value(&table) else {
        return seed.to_vec();
    };
    let mutated = bad_field_json(&json, rng);
    // TOML has no null and its integers are i64: write those as a string and an overflowing
    // literal (the field then holds what a user could have typed).
    let text = toml_text(&mutated);
    text.into_bytes()
}

/// TOML text for a JSON value, with `null` as `"null"`, numbers out of i64 as literals that
/// overflow, and NaN/∞ as TOML's `nan`/`inf`.
fn toml_text(v: &serde_json::Value) -> String {
    fn scalar(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Null => "\"null\"".into(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => {
                if n.is_f64() {
                    let f = n.as_f64().unwrap_or(0.0);
                    if f.fract() == 0.0 && f.abs() < 1e15 {
                        format!("{f:.1}")
                    } else {
                        format!("{f:e}")
                    }
                } else {
                    n.to_string()
                }
            }
            serde_json::Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
            serde_json::Value::Array(a) => {
                format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(", "))
            }
            serde_json::Value::Object(m) => format!(
                "{{ {} }}",
                m.iter()
                    .map(|(k, v)| format!("{} = {}", key(k), scalar(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    fn key(k: &str) -> String {
        if !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            k.to_string()
        } else {
            serde_json::to_string(k).unwrap_or_default()
        }
    }
    let Some(m) = v.as_object() else {
        return scalar(v);
    };
    let mut top = String::new();
    let mut tables = String::new();
    for (k, v) in m {
        match v {
            serde_json::Value::Object(inner) => {
                tables.push_str(&format!("\n[{}]\n", key(k)));
                for (ik, iv) in inner {
                    tables.push_str(&format!("{} = {}\n", key(ik), scalar(iv)));
                }
            }
            _ => top.push_str(&format!("{} = {}\n", key(k), scalar(v))),
        }
    }
    top + &tables
}

/// A JSON file with one bad field (the seed when it does not parse).
pub fn bad_field_json_bytes(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(seed) {
        Ok(v) => serde_json::to_vec_pretty(&bad_field_json(&v, rng)).unwrap_or_default(),
        Err(_) => seed.to_vec(),
    }
}

/// A JSONL file with one line given a bad field.
pub fn bad_field_jsonl(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let text = String::from_utf8_lossy(seed);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return seed.to_vec();
    }
    let i = below(rng, lines.len());
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&lines[i]) {
        lines[i] = bad_field_json(&v, rng).to_string();
    }
    (lines.join("\n") + "\n").into_bytes()
}

/// A safetensors file split into its header JSON and data.
fn split_safetensors(seed: &[u8]) -> Option<(serde_json::Value, &[u8])> {
    let n = u64::from_le_bytes(seed.get(..8)?.try_into().ok()?) as usize;
    let header = seed.get(8..8usize.checked_add(n)?)?;
    Some((serde_json::from_slice(header).ok()?, &seed[8 + n..]))
}

fn join_safetensors(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// The tensor entries of a header (every key but `__metadata__`).
fn tensor_names(header: &serde_json::Value) -> Vec<String> {
    header
        .as_object()
        .map(|m| {
            m.keys()
                .filter(|k| k.as_str() != "__metadata__")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A safetensors fault of the classes [`Fault::HeaderJson`], [`Fault::WrongDtype`],
/// [`Fault::WrongShape`] and [`Fault::HugeSize`] (the seed when it is not safetensors).
pub fn safetensors_fault(seed: &[u8], fault: Fault, rng: &mut ChaCha8Rng) -> Vec<u8> {
    use serde_json::json;
    let Some((mut header, data)) = split_safetensors(seed) else {
        return seed.to_vec();
    };
    let names = tensor_names(&header);
    let name = names
        .get(below(rng, names.len().max(1)))
        .cloned()
        .unwrap_or_default();
    match fault {
        Fault::HeaderJson => {
            let mut text = header.to_string().into_bytes();
            match below(rng, 3) {
                0 => {
                    let cut = below(rng, text.len());
                    text.truncate(cut);
                }
                1 => {
                    for _ in 0..1 + below(rng, 4) {
                        let i = below(rng, text.len());
                        let junk = b"{}[]\",:\\x\x00\xff";
                        text[i] = junk[below(rng, junk.len())];
                    }
                }
                _ => text = b"[1, 2, 3]".to_vec(),
            }
            join_safetensors(&text, data)
        }
        Fault::WrongDtype => {
            let dtypes = [
                json!("F16"),
                json!("BF16"),
                json!("F64"),
                json!("I8"),
                json!("U8"),
                json!("I64"),
                json!("BOOL"),
                json!("F8_E4M3"),
                json!("C64"),
                json!(7),
            ];
            if let Some(t) = header.get_mut(&name) {
                t["dtype"] = dtypes[below(rng, dtypes.len())].clone();
            }
            join_safetensors(header.to_string().as_bytes(), data)
        }
        Fault::WrongShape => {
            if let Some(t) = header.get_mut(&name) {
                let shape: Vec<u64> = t["shape"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
                    .unwrap_or_default();
                t["shape"] = match below(rng, 5) {
                    0 => json!([]),
                    1 => json!(shape.iter().rev().collect::<Vec<_>>()),
                    2 => {
                        let mut s = shape.clone();
                        s.push(1);
                        json!(s)
                    }
                    3 => json!([0]),
                    _ => json!([-1, 2]),
                };
            }
            join_safetensors(header.to_string().as_bytes(), data)
        }
        _ => match below(rng, 4) {
            0 => {
                let lens = [u64::MAX, 1 << 40, 1 << 31, (seed.len() as u64) + 1];
                let mut out = seed.to_vec();
                out[..8].copy_from_slice(&lens[below(rng, lens.len())].to_le_bytes());
                out
            }
            1 => {
                if let Some(t) = header.get_mut(&name) {
                    t["data_offsets"] = match below(rng, 3) {
                        0 => json!([0u64, 1u64 << 40]),
                        1 => json!([1u64 << 62, 1u64 << 63]),
                        _ => json!([8, 0]),
                    };
                }
                join_safetensors(header.to_string().as_bytes(), data)
            }
            2 => {
                if let Some(t) = header.get_mut(&name) {
                    t["shape"] = json!([1u64 << 32, 1u64 << 32]);
                }
                join_safetensors(header.to_string().as_bytes(), data)
            }
            _ => {
                if let Some(t) = header.get_mut(&name) {
                    t["shape"] = json!([1u64 << 40]);
                    t["data_offsets"] = json!([0u64, 4u64 << 40]);
                }
                join_safetensors(header.to_string().as_bytes(), data)
            }
        },
    }
}

/// A PNG whose header declares huge (or zero) dimensions, its checksum recomputed so that the
/// decoder believes it.
pub fn png_huge(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4), …, CRC at 29..33.
    if out.len() < 33 || &out[12..16] != b"IHDR" {
        return out;
    }
    let sizes = [0u32, 1 << 16, 1 << 20, (1 << 31) - 1, u32::MAX, 46_341];
    let w = sizes[below(rng, sizes.len())];
    let h = sizes[below(rng, sizes.len())];
    out[16..20].copy_from_slice(&w.to_be_bytes());
    out[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn structured_faults_change_what_they_say_and_keep_the_rest_parseable() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let header = serde_json::json!({
            "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
            "__metadata__": {"format": "pt"}
        });
        let seed = join_safetensors(header.to_string().as_bytes(), &[0u8; 24]);
        let (h, data) = split_safetensors(&seed).unwrap();
        assert_eq!((h, data.len()), (header.clone(), 24));
        let dtype = safetensors_fault(&seed, Fault::WrongDtype, &mut rng);
        let (h, _) = split_safetensors(&dtype).unwrap();
        assert_ne!(h["w"]["dtype"], "F32");
        let shape = safetensors_fault(&seed, Fault::WrongShape, &mut rng);
        let (h, _) = split_safetensors(&shape).unwrap();
        assert_ne!(h["w"]["shape"], serde_json::json!([2, 3]));

        let toml = b"a = 1\nb = \"y\"\n[runner]\niterations = 3\n";
        let seed: toml::Table = toml::from_str(std::str::from_utf8(toml).unwrap()).unwrap();
        let changed = (0..50)
            .filter(|_| {
                let text = String::from_utf8(bad_field_toml(toml, &mut rng)).unwrap();
                toml::from_str::<toml::Table>(&text).map_or(true, |t| t != seed)
            })
            .count();
        assert!(changed >= 45, "{changed} of 50 changed");
    }

    #[test]
    fn a_huge_png_header_keeps_a_valid_checksum() {
        let mut png = vec![0x89, b'P', b'N', b'G', 13, 10, 26, 10, 0, 0, 0, 13];
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&[0, 0, 0, 16, 0, 0, 0, 16, 8, 2, 0, 0, 0]);
        let crc = crc32fast::hash(&png[12..29]);
        png.extend_from_slice(&crc.to_be_bytes());
        let mut rng = rand_core::SeedableRng::seed_from_u64(2);
        let out = png_huge(&png, &mut rng);
        assert_eq!(
            u32::from_be_bytes(out[29..33].try_into().unwrap()),
            crc32fast::hash(&out[12..29])
        );
    }
}
