//! Fuzzed parsers: the `.ts` reader, the checkpoint loader and the text loader, fed
//! arbitrary bytes and mutations of valid files (truncations, flipped bytes, lines and
//! header fields that declare huge sizes). Each gives `Ok` or a clear `Err` — never a
//! panic, a hang, or an allocation out of proportion to its input (checked with
//! [`crate::alloc_watch`]). The numbers of cases keep the module to a few seconds of
//! `cargo test`; `PROPTEST_CASES=N` runs more, and `PROPTEST_RNG_SEED=N` repeats a run
//! (each run draws new cases; a failure prints the smallest input it found).

use crate::alloc_watch::watch;
use proptest::prelude::*;
use proptest::test_runner::Config;
use safetensors::tensor::{Dtype, TensorView};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use unfold::data::{parse_ts, read_ts, Dataset};
use unfold::text::{text_from_bytes, Corpus, TokenStreams, Vocabulary};
use unfold::{Cell, Error, Head, RnnConfig, RnnParams};

/// `n` cases, unless `PROPTEST_CASES` says otherwise.
fn cases(n: u32) -> Config {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A scratch file of this process for `name`.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz_parsers");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

/// Largest single allocation a parser may make for `input_len` bytes of input: a fixed
/// allowance plus a multiple of the input (vectors of `&str` per field, doubling growth).
fn allowance(input_len: usize) -> usize {
    (1 << 20) + 64 * input_len
}

/// Hard cap of the watch: past this the process aborts instead of paging the machine.
const HARD_CAP: usize = 1 << 30;

// ------------------------------------------------------------------ .ts files

/// One case of a generated `.ts` file: per dimension, its values over time; the label.
#[derive(Clone, Debug)]
struct TsCase {
    series: Vec<Vec<f32>>,
    label: usize,
}

/// A valid `.ts` file and what it must parse to.
#[derive(Clone, Debug)]
struct TsFile {
    text: String,
    labels: Vec<String>,
    cases: Vec<TsCase>,
    dims: usize,
}

fn finite_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -100.0f32..100.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => prop::sample::select(vec![1e-40f32, f32::MIN_POSITIVE, f32::MAX, f32::MIN, 3.4e38, -1e-45]),
    ]
}

fn ts_file() -> impl Strategy<Value = TsFile> {
    (1usize..4, 1usize..4, any::<bool>())
        .prop_flat_map(|(dims, num_labels, header_dims)| {
            let case = (1usize..5, 0..num_labels).prop_flat_map(move |(len, label)| {
                prop::collection::vec(prop::collection::vec(finite_value(), len), dims)
                    .prop_map(move |series| TsCase { series, label })
            });
            (
                Just(dims),
                Just(num_labels),
                Just(header_dims),
                prop::collection::vec(case, 1..5),
            )
        })
        .prop_map(|(dims, num_labels, header_dims, cases)| {
            let labels: Vec<String> = (0..num_labels).map(|k| format!("c{k}")).collect();
            let mut text = String::from("# generated\n@problemName fuzz\n@timeStamps false\n");
            if header_dims {
                text += &format!("@univariate {}\n@dimensions {dims}\n", dims == 1);
            }
            text += &format!("@classLabel true {}\n@data\n", labels.join(" "));
            for c in &cases {
                let dims: Vec<String> = c
                    .series
                    .iter()
                    .map(|s| {
                        s.iter()
                            .map(|v| format!("{v:?}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                text += &format!("{}:{}\n", dims.join(":"), labels[c.label]);
            }
            TsFile {
                text,
                labels,
                cases,
                dims,
            }
        })
}

/// Lines that make a header or a case lie about its sizes, or break the format.
const EVIL_LINES: &[&str] = &[
    "@dimensions 1000000000000",
    "@dimensions 18446744073709551615",
    "@dimensions 99999999999999999999999999",
    "@seriesLength 1000000000000",
    "@seriesLength 18446744073709551615",
    "@equalLength true",
    "@univariate true",
    "@univariate false",
    "@timeStamps true",
    "@missing true",
    "@targetLabel true",
    "@classLabel true c0 c1 c2 c0",
    "@classLabel true",
    "@data",
    "@data @data",
    "1e39:c0",
    "NaN:c0",
    "?:c0",
    "inf,-inf:c0",
    ":::",
    ":",
    ",,,:c0",
    "1,2,3",
    "\u{feff}@data",
    "\u{0}\u{0}",
    "#",
    "@",
    "1:c0:c0",
    "1 2 3:c1",
    "-0:c1",
];

#[derive(Clone, Debug)]
enum TsMutation {
    /// Keep this fraction of the bytes (at a char boundary).
    Truncate(f64),
    /// XOR one byte (the text is then read lossily, as arbitrary bytes would be).
    Flip(usize, u8),
    InsertLine(usize, &'static str),
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Replace one character by a separator or another troublesome character.
    Replace(usize, char),
}

fn ts_mutation() -> impl Strategy<Value = TsMutation> {
    prop_oneof![
        (0.0f64..1.0).prop_map(TsMutation::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| TsMutation::Flip(i, x)),
        (any::<usize>(), prop::sample::select(EVIL_LINES))
            .prop_map(|(i, l)| TsMutation::InsertLine(i, l)),
        any::<usize>().prop_map(TsMutation::DeleteLine),
        any::<usize>().prop_map(TsMutation::DuplicateLine),
        (
            any::<usize>(),
            prop::sample::select(vec![
                ':', ',', '@', '#', '\n', '\r', ' ', '?', 'e', '-', '.', '\u{feff}', 'é'
            ])
        )
            .prop_map(|(i, c)| TsMutation::Replace(i, c)),
    ]
}

fn mutate_ts(text: &str, m: &TsMutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let line = |i: usize, n: usize| if n == 0 { 0 } else { i % n };
    match *m {
        TsMutation::Truncate(f) => {
            let mut at = (text.len() as f64 * f) as usize;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            return text[..at].to_string();
        }
        TsMutation::Flip(i, x) => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let n = bytes.len();
                bytes[i % n] ^= x;
            }
            return String::from_utf8_lossy(&bytes).into_owned();
        }
        TsMutation::Replace(i, c) => {
            let mut chars: Vec<char> = text.chars().collect();
            if !chars.is_empty() {
                let n = chars.len();
                chars[i % n] = c;
            }
            return chars.into_iter().collect();
        }
        TsMutation::InsertLine(i, l) => {
            let at = i % (lines.len() + 1);
            lines.insert(at, l.to_string());
        }
        TsMutation::DeleteLine(i) => {
            if !lines.is_empty() {
                let n = lines.len();
                lines.remove(line(i, n));
            }
        }
        TsMutation::DuplicateLine(i) => {
            if !lines.is_empty() {
                let n = lines.len();
                let l = lines[line(i, n)].clone();
                lines.insert(line(i, n), l);
            }
        }
    }
    lines.join("\n") + "\n"
}

/// Pieces the `.ts` grammar is made of, for random files that get past the first line.
const TS_PIECES: &[&str] = &[
    "@classLabel true a b",
    "@classLabel true 1",
    "@data",
    "@dimensions 2",
    "@dimensions 1",
    "@univariate true",
    "@equalLength true",
    "@seriesLength 2",
    "@problemName p",
    "\n",
    "\n",
    "\n",
    ":",
    ":",
    ",",
    ",",
    "1",
    "2.5",
    "-3e2",
    "a",
    "b",
    "1",
    " ",
    "#",
    "?",
    "nan",
    "\r\n",
    "@missing false",
    "0",
];

/// Checks what `parse_ts` made of `text`: a dataset that holds together (`Some`), or an
/// error of a parser's kind (`None`); and that it allocated in proportion to the text.
fn check_ts(text: &str) -> std::result::Result<Option<Dataset>, TestCaseError> {
    let w = watch(HARD_CAP);
    let start = Instant::now();
    let result = parse_ts(text, "fuzz.ts");
    let (largest, took) = (w.largest(), start.elapsed());
    drop(w);
    prop_assert!(
        largest <= allowance(text.len()),
        "parsing {} bytes allocated {largest} bytes at once",
        text.len()
    );
    prop_assert!(took < Duration::from_secs(2), "parsing took {took:?}");
    match result {
        Ok(d) => {
            prop_assert!(!d.is_empty());
            prop_assert!(d.num_features() >= 1);
            let values: usize = d.inputs().iter().map(|x| x.len()).sum();
            prop_assert!(
                values <= text.len(),
                "{values} values from {} bytes",
                text.len()
            );
            for x in d.inputs() {
                prop_assert!(x.nrows() >= 1 && x.ncols() == d.num_features());
                prop_assert!(x.iter().all(|v| v.is_finite()));
            }
            prop_assert!(d.labels().iter().all(|&l| (l as usize) < d.num_classes()));
            Ok(Some(d))
        }
        Err(e) => {
            prop_assert!(
                matches!(
                    e,
                    Error::Parse { .. }
                        | Error::InvalidData(_)
                        | Error::ZeroLengthSequence { .. }
                        | Error::NonFinite { .. }
                ),
                "unexpected kind of error: {e:?}"
            );
            prop_assert!(!e.to_string().is_empty());
            Ok(None)
        }
    }
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn ts_valid_files_parse_exactly(file in ts_file()) {
        let d = check_ts(&file.text)?;
        prop_assert!(d.is_some(), "a valid file was refused: {}", file.text);
        let d = d.unwrap();
        prop_assert_eq!(d.len(), file.cases.len());
        prop_assert_eq!(d.num_features(), file.dims);
        prop_assert_eq!(d.class_names(), &file.labels[..]);
        for (i, c) in file.cases.iter().enumerate() {
            prop_assert_eq!(d.labels()[i] as usize, c.label);
            let x = &d.inputs()[i];
            for (k, s) in c.series.iter().enumerate() {
                for (t, v) in s.iter().enumerate() {
                    prop_assert_eq!(x[[t, k]].to_bits(), v.to_bits(), "case {} dim {} step {}", i, k, t);
                }
            }
        }
    }

    #[test]
    fn ts_mutated_files_parse_or_fail_cleanly(
        file in ts_file(),
        mutations in prop::collection::vec(ts_mutation(), 1..4),
    ) {
        let text = mutations.iter().fold(file.text, |t, m| mutate_ts(&t, m));
        check_ts(&text)?;
    }

    #[test]
    fn ts_random_pieces_parse_or_fail_cleanly(
        pieces in prop::collection::vec(prop::sample::select(TS_PIECES), 0..60),
    ) {
        check_ts(&pieces.concat())?;
    }

    #[test]
    fn ts_arbitrary_bytes_parse_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_ts(&String::from_utf8_lossy(&bytes))?;
    }
}

/// Through `read_ts`: a file that is not UTF-8 is an I/O error naming the file.
#[test]
fn ts_files_that_are_not_text_are_clean_errors() {
    let path = scratch("binary.ts");
    std::fs::write(&path, b"@classLabel true a\n@data\n1:\xff\n").unwrap();
    let e = read_ts(&path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("binary.ts"), "{e}");
}

/// A header declaring a trillion series or dimensions, or an absurd series length,
/// costs nothing until cases arrive, and a case must then match it.
#[test]
fn ts_headers_declaring_huge_sizes_allocate_nothing() {
    for header in [
        "@dimensions 1000000000000\n@seriesLength 1000000000000\n@equalLength true\n",
        "@dimensions 18446744073709551615\n",
        "@seriesLength 18446744073709551615\n@equalLength true\n",
        "@univariate true\n@seriesLength 1000000000000\n@equalLength true\n",
    ] {
        let text = format!("{header}@classLabel true a\n@data\n1,2,3:a\n");
        let w = watch(HARD_CAP);
        let r = parse_ts(&text, "huge.ts");
        assert!(w.largest() < 1 << 16, "{header:?}: {} bytes", w.largest());
        drop(w);
        let e = r.unwrap_err();
        assert!(
            matches!(e, Error::Parse { line, .. } if line >= 4),
            "{header:?}: {e}"
        );
    }
}

/// Many class labels and many cases: the reader is linear in its input, not quadratic
/// (each label was compared with every other, and each case's label searched for in the
/// list: 10^10 string comparisons for these 2 MB).
#[test]
fn ts_many_class_labels_and_cases_parse_in_linear_time() {
    let n = 100_000;
    let labels: Vec<String> = (0..n).map(|k| format!("k{k}")).collect();
    let mut text = format!("@classLabel true {}\n@data\n", labels.join(" "));
    for l in labels.iter().rev() {
        text += &format!("1:{l}\n");
    }
    let start = Instant::now();
    let d = parse_ts(&text, "many.ts").unwrap();
    let took = start.elapsed();
    assert_eq!(d.len(), n);
    assert_eq!(d.labels()[0] as usize, n - 1);
    assert!(
        took < Duration::from_secs(3),
        "{} bytes took {took:?}",
        text.len()
    );
    // a repeated label among them is still found
    let text = format!("@classLabel true {} k7\n@data\n1:k7\n", labels.join(" "));
    let e = parse_ts(&text, "many.ts").unwrap_err();
    assert!(e.to_string().contains("listed twice"), "{e}");
}

// ----------------------------------------------------------------- checkpoints

/// A small model of any cell, direction count and head.
fn checkpoint_config() -> impl Strategy<Value = RnnConfig> {
    (
        prop::sample::select(vec![Cell::Tanh, Cell::Relu, Cell::Lstm, Cell::Gru]),
        prop::sample::select(vec![Head::PerStep, Head::LastStep, Head::None]),
        any::<bool>(),
        1usize..4,
        1usize..4,
        1usize..4,
        1usize..3,
    )
        .prop_map(|(cell, head, bi, i, h, o, layers)| {
            RnnConfig::new(i, h, o)
                .cell(cell)
                .head(head)
                .bidirectional(bi)
                .num_layers(layers)
        })
}

/// Splits a safetensors file into its JSON header and its data.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

/// A safetensors file from a JSON header (any content) and data.
fn join_safetensors(header: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let mut text = serde_json::to_vec(header).unwrap();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// Shapes that overflow, or hold nothing but declare huge sizes.
fn evil_shape() -> impl Strategy<Value = Vec<u64>> {
    prop::sample::select(vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![1 << 40, 1 << 40],
        vec![0, 1 << 62],
        vec![1 << 62, 0],
        vec![0, u64::MAX],
        vec![u64::MAX, 2],
        vec![1 << 32, 1 << 32],
        vec![4, 4],
        vec![2, 3, 4],
        vec![3],
        vec![1_000_000_000_000],
    ])
}

#[derive(Clone, Debug)]
enum CheckpointMutation {
    Truncate(f64),
    Flip(usize, u8),
    /// The header length field set to this.
    HeaderLength(u64),
    /// The shape of tensor `i % n` replaced.
    Shape(usize, Vec<u64>),
    /// The dtype of tensor `i % n` replaced.
    Dtype(usize, &'static str),
    /// The data offsets of tensor `i % n` replaced.
    Offsets(usize, u64, u64),
    Remove(usize),
    /// Tensor `i % n` renamed.
    Rename(usize, &'static str),
    /// A metadata field set.
    Metadata(&'static str, &'static str),
    /// The data section grows by this many zero bytes.
    Extend(usize),
}

fn checkpoint_mutation() -> impl Strategy<Value = CheckpointMutation> {
    use CheckpointMutation as M;
    prop_oneof![
        (0.0f64..1.0).prop_map(M::Truncate),
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| M::Flip(i, x)),
        prop::sample::select(vec![0u64, 1, 7, 1 << 20, 1 << 40, u64::MAX, u64::MAX - 7])
            .prop_map(M::HeaderLength),
        (any::<usize>(), evil_shape()).prop_map(|(i, s)| M::Shape(i, s)),
        (
            any::<usize>(),
            prop::sample::select(vec!["F64", "F16", "BF16", "I8", "U64", "BOOL", "Q4", ""])
        )
            .prop_map(|(i, d)| M::Dtype(i, d)),
        (
            any::<usize>(),
            prop::sample::select(vec![0u64, 4, 1 << 40, u64::MAX]),
            prop::sample::select(vec![0u64, 4, 8, 1 << 40, u64::MAX])
        )
            .prop_map(|(i, a, b)| M::Offsets(i, a, b)),
        any::<usize>().prop_map(M::Remove),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "rnn.weight_ih_l9",
                "rnn.weight_ih_l1_reverse",
                "rnn.weight_hr_l0",
                "out.weight",
                "rnn.weight_ih_l0_reverse",
                "rnn.bias_hh_l1",
                "x"
            ])
        )
            .prop_map(|(i, n)| M::Rename(i, n)),
        (
            prop::sample::select(vec!["cell", "bidirectional", "num_layers", "format"]),
            prop::sample::select(vec![
                "lstm",
                "gru",
                "tanh",
                "relu",
                "bogus",
                "true",
                "yes",
                "99999999999999999999",
                ""
            ])
        )
            .prop_map(|(k, v)| M::Metadata(k, v)),
        prop::sample::select(vec![0usize, 4, 8, 4096]).prop_map(M::Extend),
    ]
}

fn mutate_checkpoint(bytes: &[u8], m: &CheckpointMutation) -> Vec<u8> {
    use CheckpointMutation as M;
    let tensor_names = |h: &serde_json::Map<String, serde_json::Value>| -> Vec<String> {
        h.keys().filter(|k| *k != "__metadata__").cloned().collect()
    };
    // mutations of raw bytes work on anything; header edits need a readable header
    match *m {
        M::Truncate(f) => return bytes[..(bytes.len() as f64 * f) as usize].to_vec(),
        M::Flip(i, x) => {
            let mut b = bytes.to_vec();
            if !b.is_empty() {
                let n = b.len();
                b[i % n] ^= x;
            }
            return b;
        }
        M::HeaderLength(n) => {
            let mut b = bytes.to_vec();
            if b.len() >= 8 {
                b[..8].copy_from_slice(&n.to_le_bytes());
            }
            return b;
        }
        _ => {}
    }
    let readable = bytes.len() >= 8 && {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        n <= (bytes.len() - 8) as u64
            && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
                &bytes[8..8 + n as usize],
            )
            .is_ok()
    };
    if !readable {
        return bytes.to_vec();
    }
    let (mut header, mut data) = split_safetensors(bytes);
    let names = tensor_names(&header);
    let pick = |i: usize| names.get(i % names.len().max(1)).cloned();
    match m {
        M::Shape(i, shape) => {
            if let Some(n) = pick(*i) {
                header[&n]["shape"] = serde_json::json!(shape);
            }
        }
        M::Dtype(i, d) => {
            if let Some(n) = pick(*i) {
                header[&n]["dtype"] = serde_json::json!(d);
            }
        }
        M::Offsets(i, a, b) => {
            if let Some(n) = pick(*i) {
                header[&n]["data_offsets"] = serde_json::json!([a, b]);
            }
        }
        M::Remove(i) => {
            if let Some(n) = pick(*i) {
                header.remove(&n);
            }
        }
        M::Rename(i, to) => {
            if let Some(n) = pick(*i) {
                if let Some(v) = header.remove(&n) {
                    header.insert(to.to_string(), v);
                }
            }
        }
        M::Metadata(k, v) => {
            let meta = header
                .entry("__metadata__")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(o) = meta.as_object_mut() {
                o.insert(k.to_string(), serde_json::json!(v));
            }
        }
        M::Extend(n) => data.extend(std::iter::repeat_n(0u8, *n)),
        _ => unreachable!(),
    }
    join_safetensors(&header, &data)
}

/// Loads `bytes` as a checkpoint (plainly, and for `config`) and checks the outcome: `Ok`
/// parameters that hold together and fit in the file, or a checkpoint error; allocations
/// in proportion to the file.
fn check_checkpoint(
    bytes: &[u8],
    config: &RnnConfig,
    name: &str,
) -> std::result::Result<Option<RnnParams>, TestCaseError> {
    let path = scratch(name);
    std::fs::write(&path, bytes).unwrap();
    let w = watch(HARD_CAP);
    let plain = RnnParams::load(&path);
    let fitted = RnnParams::load_for(config, &path);
    let largest = w.largest();
    drop(w);
    prop_assert!(
        largest <= allowance(bytes.len()),
        "loading {} bytes allocated {largest} bytes at once",
        bytes.len()
    );
    for r in [&plain, &fitted] {
        match r {
            Ok(p) => {
                prop_assert!(
                    p.len() * 4 <= bytes.len(),
                    "{} parameters from {} bytes",
                    p.len(),
                    bytes.len()
                );
                prop_assert!(p.to_flat().iter().all(|v| v.is_finite()));
                prop_assert!(!p.layers.is_empty());
            }
            Err(e) => prop_assert!(
                matches!(e, Error::Checkpoint { .. }),
                "unexpected kind of error: {e:?}"
            ),
        }
    }
    if let Ok(p) = &fitted {
        prop_assert!(
            p.validate(config).is_ok(),
            "load_for gave parameters that do not fit its config"
        );
    }
    Ok(plain.ok())
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn checkpoints_round_trip_and_mutations_load_or_fail_cleanly(
        config in checkpoint_config(),
        other in checkpoint_config(),
        seed in any::<u64>(),
        mutations in prop::collection::vec(checkpoint_mutation(), 0..4),
    ) {
        let params = RnnParams::init(&config, seed);
        let path = scratch("valid.safetensors");
        params.save_for(&config, &path).unwrap();
        let valid = std::fs::read(&path).unwrap();
        // the file itself loads back exactly, for its own config
        prop_assert_eq!(&RnnParams::load_for(&config, &path).unwrap(), &params);
        let bytes = mutations.iter().fold(valid, |b, m| mutate_checkpoint(&b, m));
        let loaded = check_checkpoint(&bytes, &config, "mutated.safetensors")?;
        check_checkpoint(&bytes, &other, "mutated.safetensors")?;
        if mutations.is_empty() {
            prop_assert_eq!(loaded.as_ref(), Some(&params));
        }
    }

    #[test]
    fn checkpoints_of_arbitrary_bytes_fail_cleanly(
        config in checkpoint_config(),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        header_len in prop::option::of(0u64..300),
    ) {
        let mut bytes = bytes;
        if let (Some(n), true) = (header_len, bytes.len() >= 8) {
            bytes[..8].copy_from_slice(&n.to_le_bytes());
        }
        check_checkpoint(&bytes, &config, "random.safetensors")?;
    }

    /// Headers built from parts: any names, dtypes, shapes and offsets.
    #[test]
    fn checkpoints_with_crafted_headers_fail_cleanly(
        config in checkpoint_config(),
        tensors in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0",
                    "rnn.weight_ih_l0_reverse", "rnn.weight_hh_l0_reverse", "rnn.bias_ih_l0_reverse",
                    "rnn.bias_hh_l0_reverse", "rnn.weight_ih_l1", "rnn.weight_hh_l1", "rnn.bias_ih_l1",
                    "rnn.bias_hh_l1", "out.weight", "out.bias",
                ]),
                prop_oneof![
                    3 => prop::collection::vec(0u64..5, 1..3),
                    1 => evil_shape(),
                ],
            ),
            0..12,
        ),
        cell in prop::option::of(prop::sample::select(vec!["lstm", "gru", "tanh", "relu", "x"])),
        values in prop::sample::select(vec![0.5f32, f32::NAN, f32::INFINITY, 1e-40]),
    ) {
        let mut header = serde_json::Map::new();
        let mut data: Vec<u8> = Vec::new();
        for (name, shape) in &tensors {
            // data for shapes that fit in a small file; the declared shape either way
            let n: u64 = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
            let start = data.len() as u64;
            if n <= 64 {
                for _ in 0..n {
                    data.extend_from_slice(&values.to_le_bytes());
                }
            }
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len() as u64]}),
            );
        }
        if let Some(c) = cell {
            header.insert("__metadata__".into(), serde_json::json!({"cell": c}));
        }
        check_checkpoint(&join_safetensors(&header, &data), &config, "crafted.safetensors")?;
    }
}

/// Tensors of zero elements can declare any dimension: an LSTM whose `weight_hh` is
/// `[0, 2^62]` says `hidden_size = 2^62`, so `gates · hidden` overflows. Loading must
/// refuse it (it panicked on the overflow; with wrapping arithmetic it loaded, and the
/// first forward pass asked for 2^62-wide buffers).
#[test]
fn checkpoints_whose_empty_tensors_declare_huge_sizes_are_refused() {
    let empty: &[u8] = &[];
    for (cell, hidden, input) in [
        ("lstm", 1u64 << 62, 1u64),
        ("gru", 1 << 62, 1),
        ("lstm", 1 << 61, 1),
        ("tanh", 1 << 62, 1 << 62),
        ("tanh", (1 << 63) - 1, 1),
    ] {
        let views = [
            ("rnn.weight_ih_l0", vec![0usize, input as usize]),
            ("rnn.weight_hh_l0", vec![0, hidden as usize]),
            ("rnn.bias_ih_l0", vec![0]),
            ("rnn.bias_hh_l0", vec![0]),
        ]
        .map(|(n, s)| {
            (
                n.to_string(),
                TensorView::new(Dtype::F32, s, empty).unwrap(),
            )
        });
        let meta = std::collections::HashMap::from([("cell".to_string(), cell.to_string())]);
        let bytes = safetensors::tensor::serialize(views, Some(meta)).unwrap();
        let path = scratch("huge-hidden.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let w = watch(HARD_CAP);
        let r = RnnParams::load(&path);
        drop(w);
        let e = r.expect_err("a checkpoint with hidden_size 2^62 loaded");
        assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
        eprintln!("{cell} hidden {hidden}: {e}");
    }
}

// ------------------------------------------------------------------------ text

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn text_from_arbitrary_bytes(bytes in prop::collection::vec(
        prop_oneof![3 => any::<u8>(), 1 => Just(0u8), 2 => 0x20u8..0x7f], 0..200,
    )) {
        match text_from_bytes(bytes.clone(), "fuzz.txt") {
            Ok(s) => {
                prop_assert!(!bytes.is_empty() && !bytes.contains(&0));
                prop_assert_eq!(s.as_bytes(), &bytes[..]);
            }
            Err(e) => {
                prop_assert!(matches!(e, Error::InvalidData(_)), "{e:?}");
                prop_assert!(e.to_string().contains("fuzz.txt"));
                prop_assert!(bytes.is_empty() || bytes.contains(&0) || std::str::from_utf8(&bytes).is_err());
            }
        }
    }

    #[test]
    fn vocabularies_and_corpora_of_any_text(
        text in "\\PC{0,40}|[ab\n]{0,12}",
        held_out in prop_oneof![
            4 => 0.0f64..=0.5,
            1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, -0.0, -1e-9, 0.5000001, 1.0, f64::MIN_POSITIVE]),
        ],
    ) {
        match Vocabulary::from_text(&text) {
            Ok(v) => {
                prop_assert!(!text.is_empty());
                let ids = v.encode(&text).unwrap();
                prop_assert!(ids.iter().all(|&i| (i as usize) < v.len()));
                prop_assert_eq!(v.decode(&ids), text.clone());
            }
            Err(e) => prop_assert!(text.is_empty(), "{e}"),
        }
        match Corpus::new(&text, held_out) {
            Ok(c) => {
                prop_assert!((0.0..=0.5).contains(&held_out));
                prop_assert_eq!(c.train().len() + c.held_out().len(), text.chars().count());
                prop_assert!(c.train().len() >= 2);
                prop_assert!(held_out == 0.0 || c.held_out().len() >= 2);
            }
            Err(e) => prop_assert!(matches!(e, Error::InvalidData(_) | Error::InvalidConfig { .. }), "{e:?}"),
        }
    }

    #[test]
    fn token_streams_of_any_sizes(
        tokens in prop_oneof![3 => 0usize..300, 1 => Just(usize::MAX), 1 => Just(usize::MAX / 2)],
        streams in prop_oneof![3 => 0usize..20, 1 => Just(usize::MAX)],
        seq_len in prop_oneof![3 => 0usize..40, 1 => prop::sample::select(vec![usize::MAX, usize::MAX - 1, usize::MAX / 2])],
        index in prop_oneof![3 => 0usize..10, 1 => Just(usize::MAX)],
    ) {
        let mut made = vec![TokenStreams::new(tokens, streams, seq_len)];
        made.push(TokenStreams::fitting(tokens, streams, seq_len).ok_or(Error::EmptyBatch));
        for s in made.into_iter().flatten() {
            prop_assert!(s.streams() >= 1 && s.seq_len() >= 1);
            prop_assert!(s.streams() <= tokens / 2);
            let chunks = s.chunks_per_pass();
            prop_assert!(chunks >= 1);
            prop_assert!(s.tokens_per_pass() < tokens);
            if tokens <= 300 {
                let ids: Vec<u32> = (0..tokens as u32).collect();
                let (inputs, targets) = s.chunk(&ids, index);
                prop_assert_eq!(inputs.len(), s.streams());
                for (x, y) in inputs.iter().zip(&targets) {
                    prop_assert!(!x.is_empty() && x.len() <= s.seq_len());
                    prop_assert_eq!(x.len(), y.len());
                    prop_assert!(x.iter().zip(y).all(|(a, b)| *b == a + 1));
                }
            }
        }
    }
}

// ----------------------------------------------------------------- data loader

proptest! {
    #![proptest_config(cases(128))]

    /// Any batch size and pool size (0 and near `usize::MAX` included), any seed and
    /// epoch: every sequence exactly once per epoch, in batches no larger than asked.
    #[test]
    fn batch_loaders_of_any_sizes(
        lengths in prop::collection::vec(1usize..6, 1..20),
        batch_size in prop_oneof![4 => 0usize..6, 1 => prop::sample::select(vec![usize::MAX, usize::MAX / 2, 1 << 32])],
        pool in prop_oneof![4 => 0usize..10, 1 => prop::sample::select(vec![usize::MAX, usize::MAX / 2, 1 << 32])],
        shuffle in any::<bool>(),
        seed in any::<u64>(),
        epoch in any::<u64>(),
    ) {
        let inputs = lengths.iter().map(|&l| unfold::ndarray::Array2::from_elem((l, 2), 0.5)).collect();
        let labels = (0..lengths.len() as u32).map(|i| i % 3).collect();
        let names = vec!["a".to_string(), "b".into(), "c".into()];
        let data = Dataset::new(inputs, labels, names).unwrap();
        let loader = match unfold::data::BatchLoader::new(&data, batch_size) {
            Ok(l) => l.pool_batches(pool).shuffle(shuffle).seed(seed),
            Err(e) => {
                prop_assert!(batch_size == 0, "{}", e);
                return Ok(());
            }
        };
        let plan = loader.plan(epoch);
        prop_assert_eq!(plan.len(), loader.num_batches());
        let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
        prop_assert!(plan.iter().all(|b| !b.is_empty() && b.len() <= batch_size));
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..data.len()).collect::<Vec<_>>());
        let fraction = loader.padding_fraction(epoch);
        prop_assert!((0.0..1.0).contains(&fraction), "{}", fraction);
        for b in loader.epoch(epoch) {
            prop_assert!(b.is_ok());
        }
    }
}
