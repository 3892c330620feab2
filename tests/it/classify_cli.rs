//! The `classify` and `verify` subcommands of the built binary.

use crate::common;

use common::{assert_clean_failure, stderr, stdout, unfold};

use std::path::{Path, PathBuf};
use unfold::data::{predict, read_ts, ConfusionMatrix, Standardizer};
use unfold::rng::SplitMix64;
use unfold::{Cell, Device, Head, Rnn, RnnConfig, RnnParams};

fn scratch(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("classify_cli_{}_{name}", std::process::id()));
    std::fs::write(&path, text).expect("write a scratch file");
    path
}

/// A scratch output directory that does not exist yet.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("classify_cli_{}_{name}_out", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A `.ts` file of `n` sequences of 2 features and 4..=12 steps, alternating between
/// the class near (+1.5, -1.5) and the class near (-1.5, +1.5), with Gaussian noise of
/// standard deviation `noise`; the first class is written as `labels[0]`, the second as
/// `labels[1]` (the header always declares `a b`).
fn two_class_ts(n: usize, seed: u64, noise: f32, labels: [&str; 2]) -> String {
    let mut rng = SplitMix64::new(seed);
    let mut text = String::from(
        "@problemName Toy\n@dimensions 2\n@equalLength false\n@classLabel true a b\n@data\n",
    );
    for i in 0..n {
        let class = i % 2;
        let len = 4 + rng.below(9);
        let centre = if class == 0 { 1.5 } else { -1.5 };
        let dims: Vec<String> = [centre, -centre]
            .iter()
            .map(|c| {
                (0..len)
                    .map(|_| format!("{:.3}", c + noise * rng.normal()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        text += &format!("{}:{}\n", dims.join(":"), labels[class]);
    }
    text
}

fn read_results(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("valid JSON")
}

#[test]
fn classify_smoke_run_on_the_bundled_data() {
    let dir = scratch_dir("smoke");
    let out = unfold(&[
        "classify",
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--out",
        path(&dir),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // 30 sequences of each of the 9 classes, a tenth of each held out for validation
    assert!(text.contains("train 243 sequences of lengths "), "{text}");
    assert!(
        text.contains("(validation 27 sequences of lengths "),
        "{text}"
    );
    // the progress bar is drawn only on a terminal
    assert!(!stderr(&out).contains("batches,"), "{}", stderr(&out));
    assert!(
        text.contains("test 370 sequences of lengths 7..=29"),
        "{text}"
    );
    assert_eq!(
        text.matches("train accuracy").count(),
        2,
        "one line per epoch"
    );
    let accuracy: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("test accuracy: "))
        .expect("a `test accuracy:` line")
        .trim()
        .parse()
        .expect("a number");
    // 9 balanced-ish classes: chance is about 0.11; two epochs already do far better
    assert!((0.3..=1.0).contains(&accuracy), "{accuracy}");
    let matrix: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("confusion matrix"))
        .skip(2)
        .collect();
    assert_eq!(matrix.len(), 9, "one row per class: {text}");
    let total: usize = matrix
        .iter()
        .flat_map(|l| l.split_whitespace().skip(1))
        .map(|c| c.parse::<usize>().expect("a count"))
        .sum();
    assert_eq!(total, 370, "every test sequence counted once");
    // a second run into the same directory is refused and replaces nothing
    let results = std::fs::read(dir.join("results.json")).unwrap();
    let again = unfold(&[
        "classify",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        path(&dir),
    ]);
    assert_clean_failure(&again, "already holds a run's results.json");
    assert_eq!(std::fs::read(dir.join("results.json")).unwrap(), results);
}

#[test]
fn classify_with_a_bidirectional_gru_on_the_cpu() {
    let out = unfold(&[
        "classify",
        "--cell",
        "gru",
        "--bidirectional",
        "--layers",
        "2",
        "--dropout",
        "0.1",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--schedule",
        "cosine",
        "--device",
        "cpu",
        "--out",
        path(&scratch_dir("bigru")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "model: 2 bidirectional layer(s) of 8 gru units, dropout 0.1 between layers, last-step head"
        ),
        "{text}"
    );
    assert!(text.contains("(cosine schedule)"), "{text}");
    assert!(text.contains("test accuracy: "), "{text}");
}

#[test]
fn classify_reads_given_files_and_reports_their_errors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/JapaneseVowels");
    let train = dir.join("JapaneseVowels_TRAIN.ts");
    let test = dir.join("JapaneseVowels_TEST.ts");
    let (train, test) = (train.to_str().unwrap(), test.to_str().unwrap());
    let out = unfold(&[
        "classify",
        "--train",
        train,
        "--test",
        test,
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--batch",
        "64",
        "--optimizer",
        "momentum",
        "--lr",
        "0.01",
        "--clip",
        "0",
        "--device",
        "cpu",
        "--out",
        path(&scratch_dir("files")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("JapaneseVowels: "),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("test accuracy: "));

    let bad = scratch(
        "bad.ts",
        "@classLabel true 1 2\n@data\n1,2:3,4:1\n1,2:3,x:2\n",
    );
    let out = unfold(&[
        "classify",
        "--train",
        bad.to_str().unwrap(),
        "--test",
        test,
        "--device",
        "cpu",
    ]);
    assert_clean_failure(&out, &format!("{}:4: dimension 2, value 2", bad.display()));

    // classes or features that differ between the files
    let other = scratch(
        "other.ts",
        "@classLabel true 1 2\n@data\n1,2:3,4:1\n1,2:3,5:2\n",
    );
    let out = unfold(&[
        "classify",
        "--train",
        other.to_str().unwrap(),
        "--test",
        test,
        "--device",
        "cpu",
    ]);
    assert_clean_failure(&out, "features");
    let out = unfold(&[
        "classify",
        "--train",
        "/nonexistent/train.ts",
        "--test",
        test,
    ]);
    assert_clean_failure(&out, "/nonexistent/train.ts");
    let _ = std::fs::remove_file(bad);
    let _ = std::fs::remove_file(other);
}

#[test]
fn classify_refuses_bad_settings_without_panicking() {
    for (args, needle) in [
        (&["--batch", "0"][..], "batch size"),
        (&["--hidden", "0"][..], "hidden_size"),
        (&["--layers", "0"][..], "num_layers"),
        (&["--lr=-1"][..], "learning rate"),
        (&["--clip=-1"][..], "clip"),
        (&["--lr", "nan"][..], "learning rate"),
        (&["--dropout", "1"][..], "dropout"),
        (&["--cell", "elman"][..], "elman"),
        (&["--epochs", "0"][..], "--epochs"),
        (&["--schedule", "linear"][..], "linear"),
        (&["--pool", "0"][..], "at least 1"),
        (&["--hidden", "1000000"][..], "GB"),
    ] {
        let dir = scratch_dir("refused");
        let mut all = vec!["classify", "--epochs", "1", "--device", "cpu"];
        all.extend_from_slice(&["--out", path(&dir)]);
        all.extend_from_slice(args);
        assert_clean_failure(&unfold(&all), needle);
        assert!(
            !dir.exists(),
            "{args:?}: nothing is written for refused settings"
        );
    }
    // --train without --test is refused by the argument parser
    let out = unfold(&["classify", "--train", "x.ts"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--test"), "{}", stderr(&out));
}

#[test]
fn classify_splits_validation_off_the_training_file_never_the_test_file() {
    let train = scratch("split_TRAIN.ts", &two_class_ts(60, 1, 0.5, ["a", "b"]));
    // the test file's labels are swapped: validation drawn from it would score about 0,
    // as the test does, instead of about 1
    let test = scratch("poisoned_TEST.ts", &two_class_ts(25, 2, 0.5, ["b", "a"]));
    let dir = scratch_dir("split");
    let out = unfold(&[
        "classify",
        "--train",
        path(&train),
        "--test",
        path(&test),
        "--validation",
        "0.2",
        "--epochs",
        "6",
        "--hidden",
        "8",
        "--lr",
        "0.02",
        "--batch",
        "8",
        "--device",
        "cpu",
        "--out",
        path(&dir),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // 30 sequences per class, 6 of each held out
    assert!(
        text.contains("split: train 48 sequences of lengths ")
            && text.contains("(validation 12 sequences of lengths ")
            && text.contains("split off the training file), test 25 sequences"),
        "{text}"
    );
    let results = read_results(&dir);
    assert_eq!(
        results["sequences"],
        serde_json::json!({"train": 48, "validation": 12, "test": 25})
    );
    let kept = results["kept_epoch"].as_u64().expect("kept_epoch") as usize;
    let record = &results["epochs"][kept - 1];
    let validation = record["validation_accuracy"].as_f64().unwrap();
    let test_accuracy = results["test"]["accuracy"].as_f64().unwrap();
    assert!(
        validation >= 0.9,
        "validation accuracy {validation}: {text}"
    );
    assert!(
        test_accuracy <= 0.2,
        "test accuracy {test_accuracy}: {text}"
    );

    // no validation: the last epoch is kept (into a directory of its own: a run never
    // replaces another's results)
    let last = dir.join("no-validation");
    let out = unfold(&[
        "classify",
        "--train",
        path(&train),
        "--test",
        path(&test),
        "--validation",
        "0",
        "--epochs",
        "2",
        "--hidden",
        "4",
        "--bidirectional",
        "false",
        "--device",
        "cpu",
        "--out",
        path(&last),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("split: train 60 sequences of lengths ")
            && text.contains("(no validation split)")
            && text.contains("model: 1 layer(s) of 4 gru units, last-step head")
            && text.contains("kept epoch 2 of 2 (last epoch)")
            && !text.contains("validation accuracy"),
        "{text}"
    );
    for f in [train, test] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn classify_tests_the_model_of_the_best_validation_epoch() {
    let (fraction, seed, hidden, epochs) = (0.25, 3u64, 8, 8);
    let train = scratch("best_TRAIN.ts", &two_class_ts(80, 5, 2.5, ["a", "b"]));
    let test = scratch("best_TEST.ts", &two_class_ts(40, 6, 2.5, ["a", "b"]));
    let dir = scratch_dir("best");
    let out = unfold(&[
        "classify",
        "--train",
        path(&train),
        "--test",
        path(&test),
        "--cell",
        "gru",
        "--bidirectional",
        "--hidden",
        &hidden.to_string(),
        "--epochs",
        &epochs.to_string(),
        "--validation",
        &fraction.to_string(),
        "--seed",
        &seed.to_string(),
        "--lr",
        "0.05",
        "--batch",
        "8",
        "--device",
        "cpu",
        "--out",
        path(&dir),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let results = read_results(&dir);
    let history = results["epochs"].as_array().expect("epochs");
    assert_eq!(history.len(), epochs);

    // the printed epoch lines are the record's
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("epoch ")).collect();
    assert_eq!(lines.len(), epochs, "{text}");
    for (line, record) in lines.iter().zip(history) {
        let printed: f64 = line
            .split("validation accuracy ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no validation accuracy in {line:?}"));
        let recorded = record["validation_accuracy"].as_f64().unwrap();
        assert!((printed - recorded).abs() < 6e-4, "{line} against {record}");
    }

    // the best epoch by the rule: highest validation accuracy, ties to the lower loss,
    // then to the earlier epoch
    let metric = |r: &serde_json::Value| {
        (
            r["validation_accuracy"].as_f64().unwrap(),
            r["validation_loss"].as_f64().unwrap(),
        )
    };
    let mut best = 0;
    for (i, r) in history.iter().enumerate() {
        let (acc, loss) = metric(r);
        let (best_acc, best_loss) = metric(&history[best]);
        if acc > best_acc || (acc == best_acc && loss < best_loss) {
            best = i;
        }
    }
    let best = best + 1;
    if best == epochs {
        eprintln!("note: the best epoch is the last one in this run");
    }
    assert_eq!(results["kept_epoch"].as_u64(), Some(best as u64));
    assert!(
        text.contains(&format!(
            "kept epoch {best} of {epochs} (best validation accuracy)"
        )),
        "{text}"
    );

    // the saved model, rebuilt here from the library, scores the kept epoch's validation
    // loss and accuracy on the same split, and the printed test accuracy on the test file
    let full = read_ts(&train).unwrap();
    let (rest, validation) = full.stratified_split(fraction, seed).unwrap();
    let standardizer = Standardizer::fit(&rest);
    let mean = standardizer.mean.to_vec();
    // written as the shortest decimal that reads back as the same f32
    let recorded: Vec<f32> = results["feature_mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(
        mean, recorded,
        "standardised with the training part's statistics"
    );
    let config = RnnConfig::new(2, hidden, 2)
        .cell(Cell::Gru)
        .bidirectional(true)
        .head(Head::LastStep);
    let params = RnnParams::load_for(&config, dir.join("model.safetensors")).unwrap();
    let mut rnn = Rnn::new(config, params, &Device::cpu()).unwrap();
    let score = |rnn: &mut Rnn, data: &unfold::data::Dataset| {
        let data = standardizer.apply(data).unwrap();
        let (predicted, loss) = predict(rnn, &data, 128).unwrap();
        let matrix = ConfusionMatrix::new(data.labels(), &predicted, 2).unwrap();
        (matrix.accuracy(), loss as f64)
    };
    let (acc, loss) = score(&mut rnn, &validation);
    let (kept_acc, kept_loss) = metric(&history[best - 1]);
    assert_eq!(acc, kept_acc);
    assert!(
        (loss - kept_loss).abs() <= 1e-6 * kept_loss.max(1.0),
        "{loss} against the kept epoch's {kept_loss}"
    );
    let (test_acc, _) = score(&mut rnn, &read_ts(&test).unwrap());
    assert_eq!(results["test"]["accuracy"].as_f64(), Some(test_acc));
    assert!(
        text.contains(&format!("test accuracy: {test_acc:.3}")),
        "{text}"
    );

    // the plot of loss and accuracy per epoch, with the kept epoch marked
    let svg = std::fs::read_to_string(dir.join("curves.svg")).expect("curves.svg");
    assert!(svg.contains("<svg"), "{svg}");
    for needle in ["validation", "accuracy", &format!("kept: epoch {best} ")] {
        assert!(svg.contains(needle), "the plot lacks {needle:?}");
    }
    for f in [train, test] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn classify_refuses_bad_validation_fractions() {
    let dir = scratch_dir("bad_validation");
    for value in ["-0.1", "1", "1.5", "nan", "inf", "x"] {
        let flag = format!("--validation={value}");
        let out = unfold(&[
            "classify",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--out",
            path(&dir),
            &flag,
        ]);
        assert_clean_failure(&out, "--validation");
        assert!(!dir.exists(), "{flag}: nothing is written");
    }
    // four sequences: a tenth of them rounds to none
    let tiny = scratch("tiny_TRAIN.ts", &two_class_ts(4, 1, 0.5, ["a", "b"]));
    let out = unfold(&[
        "classify",
        "--train",
        path(&tiny),
        "--test",
        path(&tiny),
        "--validation",
        "0.1",
        "--device",
        "cpu",
        "--out",
        path(&dir),
    ]);
    assert_clean_failure(&out, "--validation 0.1");
    assert!(stderr(&out).contains("holds out none"), "{}", stderr(&out));
    assert!(!dir.exists());
    let _ = std::fs::remove_file(tiny);
}

#[test]
fn verify_refuses_unknown_configs_and_tolerances() {
    let out = unfold(&["verify", "--config", "huge"]);
    assert_clean_failure(&out, "--config");
    assert!(stderr(&out).contains("lstm, gru"), "{}", stderr(&out));
    assert_clean_failure(&unfold(&["verify", "--tolerance=-1"]), "--tolerance");
}

#[test]
fn verify_passes_on_the_gpu() {
    if common::gpu().is_none() {
        return;
    }
    let out = unfold(&["verify", "--steps", "3", "--config", "small,last-step"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let steps = text.lines().filter(|l| l.starts_with("step ")).count();
    assert_eq!(steps, 6, "one line per step: {text}");
    assert!(text.contains("ok: largest relative difference"), "{text}");
}

#[test]
fn verify_passes_under_every_shader_check_setting() {
    if common::gpu().is_none() {
        return;
    }
    // the kernels compiled with wgpu's checks (all) and with none of them (the unsafe
    // opt-in of --unchecked-shaders) agree with the CPU path as the default (bounds)
    // does; an unknown setting is an error, not a guess, and so is `none` from the
    // environment, which cannot opt in to undefined behaviour
    let run = |checks: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_unfold"));
        command.args(args).env_remove("UNFOLD_SHADER_CHECKS");
        if let Some(checks) = checks {
            command.env("UNFOLD_SHADER_CHECKS", checks);
        }
        command.output().expect("the unfold binary runs")
    };
    let verify = ["verify", "--steps", "2", "--config", "small,relu"];
    let unchecked = [&verify[..], &["--unchecked-shaders"]].concat();
    for (checks, args) in [(Some("all"), &verify[..]), (None, &unchecked[..])] {
        let out = run(checks, args);
        assert!(
            out.status.success(),
            "{checks:?} {args:?}: {}",
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("ok: largest relative difference"),
            "{checks:?} {args:?}"
        );
        if checks.is_none() {
            assert!(
                stderr(&out).contains("without bounds checks"),
                "{}",
                stderr(&out)
            );
        }
    }
    let out = run(Some("fast"), &["verify", "--steps", "1"]);
    assert_clean_failure(&out, "UNFOLD_SHADER_CHECKS");
    assert!(stderr(&out).contains("all or bounds"), "{}", stderr(&out));
    let out = run(Some("none"), &["verify", "--steps", "1"]);
    assert_clean_failure(&out, "UNFOLD_SHADER_CHECKS");
    assert!(
        stderr(&out).contains("gpu_without_bounds_checks")
            && stderr(&out).contains("--unchecked-shaders"),
        "{}",
        stderr(&out)
    );
    // the bench's opt-in is for the GPU only
    let out = run(None, &["bench", "--device", "cpu", "--unchecked-shaders"]);
    assert_clean_failure(&out, "--unchecked-shaders");
}

/// The per-step lines of `unfold verify`: for each step, the CPU's and the GPU's loss and
/// the largest relative differences of the outputs, the gradients and the parameters.
fn verify_steps(text: &str) -> Vec<([f64; 2], [f64; 3])> {
    let after = |line: &str, key: &str| -> f64 {
        line.split(key)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number after {key:?} in {line:?}"))
    };
    text.lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| {
            (
                [after(l, "loss cpu "), after(l, " gpu ")],
                [
                    after(l, "outputs "),
                    after(l, "gradients "),
                    after(l, "parameters "),
                ],
            )
        })
        .collect()
}

/// The number `verify` reports as the largest relative difference in its last line.
fn reported_difference(text: &str) -> f64 {
    text.split("largest relative difference ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no largest relative difference in {text:?}"))
}

#[test]
fn verify_fails_at_zero_tolerance() {
    if common::gpu().is_none() {
        return;
    }
    // f32 sums in another order on the GPU: not bit-identical, so tolerance 0 must fail,
    // and for that reason only: the copies agree to f32 rounding (differences small but
    // not all zero, the losses equal to their printed digits), the difference reported is
    // the largest one printed, and a tolerance above it passes
    let out = unfold(&["verify", "--steps", "2", "--tolerance", "0"]);
    assert_clean_failure(&out, "verification failed: largest relative difference");
    assert!(
        stderr(&out).contains("exceeds the tolerance 0"),
        "{}",
        stderr(&out)
    );
    let text = stdout(&out);
    let steps = verify_steps(&text);
    assert_eq!(steps.len(), 2, "one line per step: {text}");
    let mut largest = 0.0f64;
    for ([loss_cpu, loss_gpu], differences) in &steps {
        assert!(
            (loss_cpu - loss_gpu).abs() <= 2e-6 * loss_cpu.abs().max(1.0),
            "losses {loss_cpu} and {loss_gpu}: {text}"
        );
        for d in differences {
            assert!(d.is_finite() && (0.0..1e-4).contains(d), "{d}: {text}");
            largest = largest.max(*d);
        }
    }
    assert!(largest > 0.0, "bit-identical to the CPU path? {text}");
    let reported = reported_difference(&stderr(&out));
    // printed to three digits in the message, two in the step lines
    assert!(
        (reported - largest).abs() <= 0.006 * largest,
        "{reported} reported, {largest} printed: {text}"
    );
    let tolerance = format!("{:e}", 2.0 * reported);
    let out = unfold(&["verify", "--steps", "2", "--tolerance", &tolerance]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("is within the tolerance {tolerance}")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn verify_wide_on_the_gpu() {
    if common::gpu().is_none() {
        return;
    }
    // hidden 512, past the persistent loop, through the tiled matrix products (one step:
    // about 5 s on lavapipe, most of it this case's three passes of 512-wide products)
    let out = unfold(&[
        "verify",
        "--config",
        "wide",
        "--steps",
        "1",
        "--time-loop",
        "tiled-steps",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("wide: input 16, hidden 512, output 10, 1 layers"),
        "{text}"
    );
    let steps = verify_steps(&text);
    assert_eq!(steps.len(), 1, "{text}");
    let largest = steps[0].1.into_iter().fold(0.0f64, f64::max);
    assert!(largest > 0.0, "bit-identical to the CPU path? {text}");
    assert!(largest < 1e-4, "{text}");
    assert!(text.contains("ok: largest relative difference"), "{text}");
    let reported = reported_difference(&text);
    assert!((reported - largest).abs() <= 0.006 * largest, "{text}");
}
