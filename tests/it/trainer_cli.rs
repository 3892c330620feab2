//! The `train` and `sample` subcommands of the built binary, with tiny models on a small
//! text: checkpoints, resuming, sampling, every cell, and every way a run can be refused.

use crate::common;

use common::{assert_clean_failure, stderr, stdout, unfold};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A tiny one-layer Elman model (the checkpoint mechanics do not depend on the cell; the
/// cells have their own tests below).
const TINY: [&str; 14] = [
    "--cell",
    "tanh",
    "--layers",
    "1",
    "--hidden",
    "16",
    "--seq-len",
    "16",
    "--batch",
    "4",
    "--device",
    "cpu",
    "--sample-len",
    "20",
];

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("trainer_cli_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// A small text: the start of the bundled corpus.
fn small_text(dir: &Path) -> PathBuf {
    let text: String = unfold::text::BUNDLED_TEXT.chars().take(3000).collect();
    let path = dir.join("small.txt");
    std::fs::write(&path, text).expect("write the text");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// `unfold train` with the tiny settings and `extra` arguments (whose `--cell` and
/// `--layers` replace the tiny ones, as a resumed checkpoint's do); must succeed.
fn train(extra: &[&str]) -> Output {
    let out = train_command(extra);
    assert!(out.status.success(), "train failed: {}", stderr(&out));
    out
}

/// [`train`], succeeding or not.
fn train_command(extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    let resume = extra.contains(&"--resume");
    let own_cell = resume || extra.contains(&"--cell");
    let own_layers = resume || extra.contains(&"--layers");
    args.extend_from_slice(if own_cell { &[] } else { &TINY[..2] });
    args.extend_from_slice(if own_layers { &[] } else { &TINY[2..4] });
    args.extend_from_slice(&TINY[4..]);
    args.extend_from_slice(extra);
    unfold(&args)
}

fn record(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("checkpoint.json")).expect("checkpoint.json");
    serde_json::from_str(&text).expect("checkpoint.json is JSON")
}

/// Every file of a checkpoint directory with its bytes (not `previous/`).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read the directory")
        .map(|e| e.expect("an entry"))
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read a file"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn train_writes_a_checkpoint_a_plot_and_a_summary() {
    let dir = scratch("fresh");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    let out = train(&["--data", s(&text), "--out", s(&ck), "--steps", "5"]);
    for f in [
        "model.safetensors",
        "state.safetensors",
        "checkpoint.json",
        "loss.svg",
    ] {
        assert!(ck.join(f).is_file(), "{f} missing");
    }
    let svg = std::fs::read_to_string(ck.join("loss.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("held-out"), "{svg}");
    let meta = record(&ck);
    assert_eq!(meta["progress"]["step"], 5);
    assert_eq!(meta["progress"]["optimizer_steps"], 5);
    assert_eq!(meta["progress"]["tokens"], 5 * 4 * 16);
    assert_eq!(meta["config"]["hidden"], 16);
    assert_eq!(meta["config"]["optimizer"], "adam");
    // an evaluation before training and one at the end
    let history = meta["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history[1]["held_out_loss"].as_f64().unwrap() > 0.0);
    // the weights load as a plain unfold checkpoint (PyTorch's names)
    let params = unfold::RnnParams::load(ck.join("model.safetensors")).unwrap();
    assert_eq!(params.layers[0].w_hh.shape(), &[16, 16]);
    let text = stdout(&out);
    let summary = text.lines().last().unwrap();
    assert!(
        summary.starts_with("done: 5 steps") && summary.contains("held-out loss"),
        "{summary}"
    );
}

#[test]
fn resume_continues_exactly_where_the_run_stopped() {
    let dir = scratch("resume");
    let text = small_text(&dir);
    let (once, twice) = (dir.join("once"), dir.join("twice"));
    // a constant learning rate: a schedule spans each run's own budget
    let constant = ["--schedule", "constant"];
    train(
        &[
            &constant[..],
            &["--data", s(&text), "--out", s(&once), "--steps", "8"],
        ]
        .concat(),
    );
    train(
        &[
            &constant[..],
            &["--data", s(&text), "--out", s(&twice), "--steps", "5"],
        ]
        .concat(),
    );
    let out = train(&["--resume", s(&twice), "--steps", "3"]);
    assert!(
        stdout(&out).contains("resuming at step 5"),
        "{}",
        stdout(&out)
    );
    let meta = record(&twice);
    assert_eq!(meta["progress"]["step"], 8);
    assert_eq!(meta["progress"]["optimizer_steps"], 8);
    // the resumed run remembers its text, configuration and history
    assert_eq!(meta["config"]["hidden"], 16);
    assert_eq!(meta["history"].as_array().unwrap().len(), 3);
    // weights, optimizer moments and the streams' state were all restored: the result is
    // the uninterrupted run's, bit for bit
    for f in ["model.safetensors", "state.safetensors"] {
        assert!(
            std::fs::read(once.join(f)).unwrap() == std::fs::read(twice.join(f)).unwrap(),
            "{f} differs between 8 steps and 5 + 3 resumed steps"
        );
    }
}

#[test]
fn sample_starts_with_the_prime_and_has_the_asked_length() {
    let dir = scratch("sample");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    train(&["--data", s(&text), "--out", s(&ck), "--steps", "5"]);
    let args = [
        "sample",
        "--checkpoint",
        s(&ck),
        "--prime",
        "Anne ",
        "--len",
        "40",
        "--temperature",
        "0.9",
        "--seed",
        "3",
    ];
    let out = unfold(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let sampled = stdout(&out);
    let sampled = sampled.strip_suffix('\n').unwrap();
    assert!(sampled.starts_with("Anne "), "{sampled:?}");
    assert_eq!(sampled.chars().count(), 5 + 40, "{sampled:?}");
    // the seed decides the sample
    assert_eq!(stdout(&unfold(&args)), stdout(&out));
    // temperature 0 is the most likely character each time
    let greedy = unfold(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "--prime",
        "T",
        "--len",
        "7",
        "--temperature",
        "0",
    ]);
    assert!(greedy.status.success());
    assert_eq!(stdout(&greedy).trim_end_matches('\n').chars().count(), 8);

    let bad = unfold(&["sample", "--checkpoint", s(&ck), "--prime", "Zürich"]);
    assert_clean_failure(&bad, "prime");
    let bad = unfold(&["sample", "--checkpoint", s(&ck), "--temperature=-1"]);
    assert_clean_failure(&bad, "temperature");
}

#[test]
fn bad_text_files_fail_cleanly_and_leave_the_checkpoint_untouched() {
    let dir = scratch("bad_text");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    train(&["--data", s(&text), "--out", s(&ck), "--steps", "3"]);
    let before = snapshot(&ck);

    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = dir.join("binary.bin");
    std::fs::write(
        &binary,
        [0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0xff, 0xfe],
    )
    .unwrap();
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    let missing = dir.join("no-such-file.txt");
    for (file, needle) in [
        (&empty, "is empty"),
        (&binary, "not a text file"),
        (&latin1, "not UTF-8 text"),
        (&missing, "no-such-file.txt"),
    ] {
        // resuming the checkpoint on it
        let out = unfold(&[
            "train",
            "--resume",
            s(&ck),
            "--data",
            s(file),
            "--steps",
            "2",
            "--device",
            "cpu",
        ]);
        assert_clean_failure(&out, needle);
        assert!(snapshot(&ck) == before, "the checkpoint changed");
        // a fresh run writing into a new directory creates nothing
        let fresh = dir.join("fresh");
        let mut args = vec![
            "train",
            "--data",
            s(file),
            "--out",
            s(&fresh),
            "--steps",
            "2",
        ];
        args.extend_from_slice(&TINY);
        assert_clean_failure(&unfold(&args), needle);
        assert!(!fresh.exists(), "a failed run created its output directory");
    }
    // a text with characters the checkpoint never saw
    let other = dir.join("other.txt");
    std::fs::write(&other, "Zürich ".repeat(100)).unwrap();
    let out = unfold(&[
        "train",
        "--resume",
        s(&ck),
        "--data",
        s(&other),
        "--steps",
        "2",
    ]);
    assert_clean_failure(&out, "vocabulary");
    assert!(snapshot(&ck) == before, "the checkpoint changed");
}

#[test]
fn unwritable_or_occupied_output_directories_are_refused() {
    let dir = scratch("bad_out");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    train(&["--data", s(&text), "--out", s(&ck), "--steps", "3"]);
    let before = snapshot(&ck);

    // a path below a regular file cannot be a directory (this holds even for root)
    let file = dir.join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let below = file.join("out");
    let mut args = vec![
        "train",
        "--data",
        s(&text),
        "--out",
        s(&below),
        "--steps",
        "2",
    ];
    args.extend_from_slice(&TINY);
    assert_clean_failure(&unfold(&args), "output directory");
    // resuming into such a place leaves the resumed checkpoint alone
    let out = unfold(&[
        "train",
        "--resume",
        s(&ck),
        "--out",
        s(&below),
        "--steps",
        "2",
    ]);
    assert_clean_failure(&out, "output directory");
    assert!(snapshot(&ck) == before, "the checkpoint changed");
    // a directory that already holds a checkpoint is not overwritten by a fresh run
    let mut args = vec!["train", "--data", s(&text), "--out", s(&ck), "--steps", "2"];
    args.extend_from_slice(&TINY);
    assert_clean_failure(&unfold(&args), "already holds a checkpoint");
    assert!(snapshot(&ck) == before, "the checkpoint changed");
    // nor by resuming another checkpoint into it
    let other = dir.join("other");
    train(&["--data", s(&text), "--out", s(&other), "--steps", "2"]);
    let out = unfold(&[
        "train",
        "--resume",
        s(&other),
        "--out",
        s(&ck),
        "--steps",
        "2",
    ]);
    assert_clean_failure(&out, "already holds a checkpoint");
    assert!(snapshot(&ck) == before, "the checkpoint changed");
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_clear_errors() {
    let dir = scratch("corrupt");
    let text = small_text(&dir);
    let good = dir.join("good");
    train(&["--data", s(&text), "--out", s(&good), "--steps", "3"]);
    let copy = |name: &str| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for (f, bytes) in snapshot(&good) {
            std::fs::write(d.join(f), bytes).unwrap();
        }
        d
    };
    let resume = |ck: &Path, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--resume",
            s(ck),
            "--steps",
            "2",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        unfold(&args)
    };
    let sample = |ck: &Path| unfold(&["sample", "--checkpoint", s(ck), "--len", "5"]);

    // one flipped byte in the weights
    let flipped = copy("flipped");
    let mut bytes = std::fs::read(flipped.join("model.safetensors")).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(flipped.join("model.safetensors"), &bytes).unwrap();
    let before = snapshot(&flipped);
    assert_clean_failure(&resume(&flipped, &[]), "do not match checkpoint.json");
    assert_clean_failure(&sample(&flipped), "do not match checkpoint.json");
    assert!(snapshot(&flipped) == before, "a refused checkpoint changed");

    // a truncated optimizer state
    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join("state.safetensors")).unwrap();
    std::fs::write(
        truncated.join("state.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    assert_clean_failure(&resume(&truncated, &[]), "state.safetensors");

    // a record that is not JSON
    let garbled = copy("garbled");
    std::fs::write(garbled.join("checkpoint.json"), "{\"format\": \"unfold").unwrap();
    assert_clean_failure(&resume(&garbled, &[]), "not a valid checkpoint record");
    assert_clean_failure(&sample(&garbled), "not a valid checkpoint record");

    // a directory that is not a checkpoint, and one that does not exist
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_clean_failure(&resume(&empty, &[]), "checkpoint.json");
    assert_clean_failure(&sample(&dir.join("nowhere")), "no such directory");
    assert!(!dir.join("nowhere").exists());

    // a configuration that does not fit the checkpoint
    let out = resume(&good, &["--hidden", "32"]);
    assert_clean_failure(&out, "--hidden 32 does not fit the checkpoint");
    let out = resume(&good, &["--optimizer", "sgd"]);
    assert_clean_failure(&out, "--optimizer sgd does not fit the checkpoint");
    let out = resume(&good, &["--cell", "lstm"]);
    assert_clean_failure(
        &out,
        "--cell lstm does not fit the checkpoint, which was trained with --cell tanh",
    );
}

#[test]
fn a_save_cut_short_falls_back_to_the_checkpoint_before_it() {
    let dir = scratch("cut_short");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    train(&["--data", s(&text), "--out", s(&ck), "--steps", "3"]);
    train(&["--resume", s(&ck), "--steps", "2"]);
    // the second save kept the first checkpoint whole in previous/
    assert_eq!(record(&ck)["progress"]["step"], 5);
    assert_eq!(record(&ck.join("previous"))["progress"]["step"], 3);
    let previous_model = std::fs::read(ck.join("previous/model.safetensors")).unwrap();
    assert!(previous_model != std::fs::read(ck.join("model.safetensors")).unwrap());

    // a save cut after the new weights, before the record that vouches for them
    let mut bytes = std::fs::read(ck.join("model.safetensors")).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(ck.join("model.safetensors"), &bytes).unwrap();

    let out = unfold(&["sample", "--checkpoint", s(&ck), "--last", "--len", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("using the checkpoint saved before it"),
        "{}",
        stderr(&out)
    );
    let out = train(&["--resume", s(&ck), "--steps", "1"]);
    assert!(
        stdout(&out).contains("resuming at step 3"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("do not match checkpoint.json"),
        "{}",
        stderr(&out)
    );
    // the new save is whole again; previous/ kept the good checkpoint meanwhile
    assert_eq!(record(&ck)["progress"]["step"], 4);
    assert_eq!(record(&ck.join("previous"))["progress"]["step"], 3);
    assert!(std::fs::read(ck.join("previous/model.safetensors")).unwrap() == previous_model);
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_last_checkpoint() {
    let dir = scratch("ctrl_c");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    let mut child = Command::new(env!("CARGO_BIN_EXE_unfold"))
        .args(["train", "--data", s(&text), "--out", s(&ck)])
        .args(TINY)
        // --minutes bounds the run should the interrupt never come
        .args([
            "--steps",
            "100000000",
            "--eval-every",
            "100000000",
            "--minutes",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unfold train");
    // the interrupt handler is in place once the output directory is announced; wait
    // for the first evaluation's sample too, so that training steps have begun
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("sample:") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    seen.push_str(&rest.join("\n"));
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("interrupted at step"), "{seen}");
    let meta = record(&ck);
    let step = meta["progress"]["step"].as_u64().unwrap();
    assert!(step > 0, "no training step before the interrupt: {seen}");
    assert!(
        seen.contains(&format!("interrupted at step {step}")),
        "{seen}"
    );
    // and it resumes
    let out = train(&["--resume", s(&ck), "--steps", "1"]);
    assert!(stdout(&out).contains(&format!("resuming at step {step}")));
}

/// The tensor names in a safetensors file.
fn tensor_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).expect("read a safetensors file");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

/// Rewrites `checkpoint.json` with `edit` applied (the record is not fingerprinted).
fn edit_record(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut meta = record(dir);
    edit(&mut meta);
    std::fs::write(
        dir.join("checkpoint.json"),
        serde_json::to_vec_pretty(&meta).unwrap(),
    )
    .unwrap();
}

/// The fingerprint `checkpoint.json` records for a file.
fn fingerprint_of(path: &Path) -> String {
    format!(
        "{:016x}",
        unfold::text::fingerprint(&std::fs::read(path).unwrap())
    )
}

#[test]
fn an_lstm_trains_resumes_exactly_with_its_cell_state_and_samples() {
    let dir = scratch("lstm");
    let text = small_text(&dir);
    let (once, twice) = (dir.join("once"), dir.join("twice"));
    // two layers with dropout between them and before the readout: the masks must also
    // continue exactly
    let lstm = [
        "--cell",
        "lstm",
        "--layers",
        "2",
        "--dropout",
        "0.25",
        "--out-dropout",
        "0.125",
        "--schedule",
        "constant",
    ];
    let out = train(
        &[
            &lstm[..],
            &["--data", s(&text), "--out", s(&once), "--steps", "6"],
        ]
        .concat(),
    );
    assert!(
        stdout(&out).contains(
            "model: 2 lstm layer(s) of 16 units, dropout 0.25 between layers, 0.125 before the readout"
        ),
        "{}",
        stdout(&out)
    );
    train(
        &[
            &lstm[..],
            &["--data", s(&text), "--out", s(&twice), "--steps", "4"],
        ]
        .concat(),
    );
    // the cell and dropout come from the checkpoint
    let out = train(&["--resume", s(&twice), "--steps", "2"]);
    assert!(
        stdout(&out).contains("resuming at step 4"),
        "{}",
        stdout(&out)
    );
    let meta = record(&twice);
    assert_eq!(meta["config"]["cell"], "lstm");
    assert_eq!(meta["config"]["dropout"], 0.25);
    assert_eq!(meta["config"]["out_dropout"], 0.125);
    assert_eq!(meta["progress"]["step"], 6);
    // the streams carry (h, c), and the weights are an LSTM's
    assert_eq!(
        tensor_names(&twice.join("state.safetensors")),
        [
            "optimizer.m",
            "optimizer.v",
            "streams.cell",
            "streams.hidden"
        ]
    );
    let vocab = meta["vocabulary"].as_str().unwrap().chars().count();
    let config = unfold::RnnConfig::new(vocab, 16, vocab)
        .num_layers(2)
        .cell(unfold::Cell::Lstm);
    let params = unfold::RnnParams::load_for(&config, twice.join("model.safetensors")).unwrap();
    assert_eq!(params.layers[0].w_hh.shape(), &[4 * 16, 16]);
    for f in ["model.safetensors", "state.safetensors"] {
        assert!(
            std::fs::read(once.join(f)).unwrap() == std::fs::read(twice.join(f)).unwrap(),
            "{f} differs between 6 steps and 4 + 2 resumed steps"
        );
    }

    let out = unfold(&[
        "sample",
        "--checkpoint",
        s(&twice),
        "--prime",
        "Anne",
        "--len",
        "30",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim_end_matches('\n').chars().count(), 4 + 30);

    // another cell is refused, and the checkpoint stays as it was
    let before = snapshot(&twice);
    let out = unfold(&[
        "train",
        "--resume",
        s(&twice),
        "--steps",
        "1",
        "--cell",
        "gru",
    ]);
    assert_clean_failure(
        &out,
        "--cell gru does not fit the checkpoint, which was trained with --cell lstm",
    );
    assert!(
        snapshot(&twice) == before,
        "a refused resume changed the checkpoint"
    );
}

#[test]
fn an_lstm_state_without_its_cell_state_is_refused() {
    let dir = scratch("lstm_no_c");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    train(&[
        "--data",
        s(&text),
        "--out",
        s(&ck),
        "--steps",
        "2",
        "--cell",
        "lstm",
    ]);
    // the state file rewritten without streams.cell, its fingerprint updated to match
    let path = ck.join("state.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "streams.cell")
        .collect();
    std::fs::write(&path, safetensors::serialize(kept, None).unwrap()).unwrap();
    let state = fingerprint_of(&path);
    edit_record(&ck, |meta| meta["files"]["state"] = state.into());
    // no earlier checkpoint to fall back to (every evaluation saves one: see previous/)
    std::fs::remove_dir_all(ck.join("previous")).unwrap();
    let out = unfold(&[
        "train",
        "--resume",
        s(&ck),
        "--steps",
        "1",
        "--device",
        "cpu",
    ]);
    assert_clean_failure(
        &out,
        "holds streams.hidden but a lstm model carries streams.hidden and streams.cell",
    );
}

#[test]
fn a_checkpoint_from_before_cells_continues_as_tanh() {
    let dir = scratch("before_cells");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    train(&["--data", s(&text), "--out", s(&ck), "--steps", "2"]);
    // as the trainer wrote it before: no cell or dropout in the record, and the weights
    // saved by `RnnParams::save`, which records no cell for an Elman model
    let model = ck.join("model.safetensors");
    unfold::RnnParams::load(&model)
        .unwrap()
        .save(&model)
        .unwrap();
    let fingerprint = fingerprint_of(&model);
    edit_record(&ck, |meta| {
        let config = meta["config"].as_object_mut().unwrap();
        config.remove("cell");
        config.remove("dropout");
        meta["files"]["model"] = fingerprint.into();
    });
    let out = unfold(&["sample", "--checkpoint", s(&ck), "--len", "5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&["--resume", s(&ck), "--steps", "1"]);
    assert!(
        stdout(&out).contains("model: 1 tanh layer(s)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(record(&ck)["config"]["cell"], "tanh");
    assert_eq!(record(&ck)["config"]["dropout"], 0.0);
}

#[test]
fn the_best_checkpoint_is_kept_and_patience_stops_a_run_that_gets_worse() {
    let dir = scratch("best");
    let text = small_text(&dir);
    let ck = dir.join("ck");
    // a learning rate far too high: the held-out loss soon gets worse, and stays so
    let out = train(&[
        "--data",
        s(&text),
        "--out",
        s(&ck),
        "--steps",
        "40",
        "--eval-every",
        "1",
        "--lr",
        "0.5",
        "--patience",
        "3",
        "--schedule",
        "constant",
    ]);
    let text_out = stdout(&out);
    assert!(text_out.contains("stopping early"), "{text_out}");
    let latest = record(&ck);
    let best = record(&ck.join("best"));
    let steps = latest["progress"]["step"].as_u64().unwrap();
    assert!(steps < 40, "patience stopped the run ({steps} steps)");
    // best/ holds the evaluation with the lowest held-out loss, three before the last
    let losses: Vec<(u64, f64)> = latest["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["step"].as_u64().unwrap(),
                p["held_out_loss"].as_f64().unwrap(),
            )
        })
        .collect();
    let (best_step, best_loss) = losses
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(best["progress"]["step"].as_u64().unwrap(), best_step);
    assert_eq!(steps, best_step + 3);
    assert!(text_out
        .lines()
        .last()
        .unwrap()
        .contains(&format!("best {best_loss:.3}")));
    // sample takes best/ unless told --last
    let sampled = |extra: &[&str]| {
        let args = [
            &[
                "sample",
                "--checkpoint",
                s(&ck),
                "--len",
                "30",
                "--seed",
                "3",
            ][..],
            extra,
        ]
        .concat();
        let out = unfold(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let from_best = sampled(&[]);
    assert_eq!(from_best, {
        let out = unfold(&[
            "sample",
            "--checkpoint",
            s(&ck.join("best")),
            "--len",
            "30",
            "--seed",
            "3",
        ]);
        stdout(&out)
    });
    assert_ne!(
        from_best,
        sampled(&["--last"]),
        "the last weights are not the best ones"
    );
    // best/ resumed in place would be replaced by later checkpoints: refused, untouched;
    // into another directory it is a run like any other
    let best_dir = ck.join("best");
    let best_before = std::fs::read(best_dir.join("model.safetensors")).unwrap();
    let in_place = train_command(&["--data", s(&text), "--resume", s(&best_dir), "--steps", "1"]);
    assert_clean_failure(&in_place, "is the best checkpoint of the run");
    let elsewhere = dir.join("from-best");
    let args = ["--data", s(&text), "--resume", s(&best_dir), "--steps", "1"];
    let out = train(&[&args[..], &["--out", s(&elsewhere)]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let best_after = std::fs::read(ck.join("best").join("model.safetensors")).unwrap();
    assert_eq!(best_after, best_before);
    // patience and evaluation intervals are counts of at least one
    for flag in ["--patience", "--eval-every"] {
        let out = train_command(&["--data", s(&text), "--out", s(&dir.join("zero")), flag, "0"]);
        assert_clean_failure(&out, "at least 1");
        assert!(!dir.join("zero").exists(), "{flag} 0 wrote nothing");
    }
}

/// `87.3k` or `1.2M` or `950` as a number.
fn parse_count(text: &str) -> f64 {
    let (digits, scale) = match text.strip_suffix('k') {
        Some(d) => (d, 1e3),
        None => match text.strip_suffix('M') {
            Some(d) => (d, 1e6),
            None => (text, 1.0),
        },
    };
    digits.parse::<f64>().expect("a count") * scale
}

#[test]
fn metrics_file_has_a_line_per_step_matching_the_summary_and_the_record() {
    let dir = scratch("metrics");
    let text = small_text(&dir);
    let (ck, metrics) = (dir.join("ck"), dir.join("metrics.jsonl"));
    let args = ["--data", s(&text), "--out", s(&ck), "--eval-every", "3"];
    let out = train(&[&args[..], &["--steps", "6", "--metrics", s(&metrics)]].concat());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    // the evaluation before the first step, then one line per step
    assert_eq!(steps, [0, 1, 2, 3, 4, 5, 6], "{lines:?}");
    assert!(lines[0].get("loss").is_none() && lines[0]["held_out"].is_f64());
    let loss = |i: usize| lines[i]["loss"].as_f64().unwrap();
    // held_out exactly where the record has an evaluation, with the same value
    let history = record(&ck)["history"].as_array().unwrap().clone();
    let evaluated: Vec<u64> = history
        .iter()
        .map(|p| p["step"].as_u64().unwrap())
        .collect();
    assert_eq!(evaluated, [0, 3, 6]);
    for (i, line) in lines.iter().enumerate() {
        match history.iter().find(|p| p["step"] == line["step"]) {
            Some(p) => assert_eq!(line["held_out"], p["held_out_loss"], "step {i}"),
            None => assert!(line.get("held_out").is_none(), "step {i}: {line}"),
        }
    }
    // the record's training loss is the mean of the steps' losses since the evaluation
    // before (every chunk has 4 x 16 characters)
    for (at, range) in [(1, 1..4), (2, 4..7)] {
        let mean = range.clone().map(loss).sum::<f64>() / 3.0;
        let recorded = history[at]["train_loss"].as_f64().unwrap();
        assert!((mean - recorded).abs() < 1e-5, "{mean} vs {recorded}");
    }
    // and the summary line prints the last of them (f32 values, as the run printed them)
    let summary = stdout(&out).lines().last().unwrap().to_string();
    let train_loss = history[2]["train_loss"].as_f64().unwrap() as f32;
    let held = lines[6]["held_out"].as_f64().unwrap() as f32;
    assert!(
        summary.contains(&format!(
            "step 6: train loss {train_loss:.3}, held-out loss {held:.3}"
        )),
        "{summary}"
    );
    // each step's speed: the steps alone are at least as fast as the whole run, which
    // also evaluated and wrote checkpoints
    let rate = summary
        .split(" chars/s")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .map(parse_count)
        .expect("the summary's speed");
    let step_seconds: f64 = (1..7)
        .map(|i| 64.0 / lines[i]["chars_per_s"].as_f64().unwrap())
        .sum();
    assert!(step_seconds > 0.0);
    assert!(
        6.0 * 64.0 / step_seconds >= 0.9 * rate,
        "{step_seconds} s vs {rate}"
    );
    // a resumed run appends its steps
    train(&["--resume", s(&ck), "--steps", "2", "--metrics", s(&metrics)]);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(text.lines().count(), 9);
    assert_eq!(last["step"], 8);
    assert!(last["held_out"].is_f64() && last["loss"].is_f64());
}

/// `UNFOLD_ADAPTER` picks the GPU by index (as a rank of an MPI job does by its local
/// rank): a bad value is a clear error; `--device cpu` ignores it; an index past the
/// adapters wraps around to one of them.
#[test]
fn unfold_adapter_picks_the_gpu_by_index() {
    let dir = scratch("adapter");
    let text = small_text(&dir);
    let run = |value: &str, device: &str, out: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_unfold"))
            .args(["train", "--data", s(&text), "--steps", "1", "--hidden", "8"])
            .args(["--batch", "2", "--seq-len", "8", "--sample-len", "5"])
            .args(["--device", device, "--out", s(&dir.join(out))])
            .env("UNFOLD_ADAPTER", value)
            .output()
            .expect("unfold runs");
        eprintln!("{}", stderr(&out));
        out
    };
    assert_clean_failure(&run("first", "gpu", "bad"), "UNFOLD_ADAPTER");
    assert!(
        !dir.join("bad").exists(),
        "a refused run wrote its directory"
    );
    assert!(run("first", "cpu", "cpu").status.success());
    if common::gpu().is_some() {
        let out = run("7", "gpu", "gpu");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("unfold: using GPU "),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn mixed_precision_training_needs_a_gpu_and_writes_nothing_when_refused() {
    let dir = scratch("mixed_refused");
    let text = small_text(&dir);
    let out_dir = dir.join("run");
    let mut args = vec![
        "train",
        "--data",
        s(&text),
        "--out",
        s(&out_dir),
        "--steps",
        "2",
        "--mixed-precision",
    ];
    args.extend_from_slice(&TINY);
    // TINY picks the CPU path: mixed precision is a GPU mode
    assert_clean_failure(&unfold(&args), "--mixed-precision");
    assert!(
        !out_dir.exists(),
        "a refused run created its output directory"
    );
}
