//! The `classify` and `verify` subcommands of the built binary.

use crate::common;

use common::{assert_clean_failure, stderr, stdout, unfold};

use std::path::PathBuf;

fn scratch(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("classify_cli_{}_{name}", std::process::id()));
    std::fs::write(&path, text).expect("write a scratch file");
    path
}

#[test]
fn classify_smoke_run_on_the_bundled_data() {
    let out = unfold(&["classify", "--epochs", "2", "--device", "cpu"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("train 270 sequences of lengths 7..=26"),
        "{text}"
    );
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
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "model: 2 bidirectional layer(s) of 8 gru units, dropout 0.1 between layers, last-step head"
        ),
        "{text}"
    );
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
    ] {
        let mut all = vec!["classify", "--epochs", "1", "--device", "cpu"];
        all.extend_from_slice(args);
        assert_clean_failure(&unfold(&all), needle);
    }
    // --train without --test is refused by the argument parser
    let out = unfold(&["classify", "--train", "x.ts"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--test"), "{}", stderr(&out));
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
