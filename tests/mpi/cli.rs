//! The `unfold` command line under `mpirun` (`train` and `classify` data-parallel). This
//! part of the binary runs as a plain process (`<binary> --cli [filter]`, which
//! `scripts/mpi-tests.sh` does after the library cases) and starts `mpirun` itself:
//! `UNFOLD_MPIRUN` is its command line (default `mpirun --oversubscribe`).
//!
//! The reference is the same command in one process without MPI: the global batch is
//! the same, so per-step losses (from `--metrics`) and the saved weights must agree to
//! f32 rounding.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

type Outcome = std::result::Result<String, String>;
/// A named case.
type Case = (&'static str, fn() -> Outcome);

/// Relative agreement with one process (per-step losses, weights against their largest
/// magnitude), as the library cases.
const TOLERANCE: f64 = 1e-5;

pub fn main(filter: Option<String>) {
    let cases: Vec<Case> = vec![
        ("cli_train_two_ranks_match_one_process", train_matches),
        ("cli_resume_across_rank_counts", resume_across_rank_counts),
        ("cli_failing_rank_aborts_the_job", failing_rank),
        ("cli_crashed_rank_ends_the_job", crashed_rank),
        (
            "cli_ranks_that_disagree_stop_and_write_nothing",
            disagreeing_ranks,
        ),
        ("cli_classify_two_ranks_match_one_process", classify_matches),
        (
            "cli_gpu_ranks_share_one_adapter",
            gpu_ranks_share_an_adapter,
        ),
    ];
    println!(
        "unfold command line under mpirun: {}",
        mpirun_prefix().join(" ")
    );
    let mut failures = 0;
    let mut ran = 0;
    for (name, case) in cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        let start = Instant::now();
        let outcome = case();
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok(detail) => println!("{name} ... ok ({secs:.2} s) {detail}"),
            Err(why) => {
                failures += 1;
                println!("{name} ... FAILED ({secs:.2} s): {why}");
            }
        }
    }
    println!(
        "{} ({ran} command-line cases; {failures} failure(s))",
        if failures == 0 { "ok" } else { "FAILED" }
    );
    if failures != 0 {
        std::process::exit(1);
    }
}

fn mpirun_prefix() -> Vec<String> {
    std::env::var("UNFOLD_MPIRUN")
        .unwrap_or_else(|_| "mpirun --oversubscribe".into())
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A fresh scratch directory.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mpi_cli_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The start of the bundled text, in `dir`.
fn small_text(dir: &Path) -> PathBuf {
    let text: String = unfold::text::BUNDLED_TEXT.chars().take(3000).collect();
    let path = dir.join("small.txt");
    std::fs::write(&path, text).expect("write the text");
    path
}

/// `unfold train` on a tiny model: 5 streams (uneven over 2 and 3 ranks), no
/// `--eval-every`; a constant learning rate, since a resumed run's cosine schedule starts
/// again over its own budget and so differs from an uninterrupted run's.
fn train_args(text: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        s(text),
        "--schedule",
        "constant",
        "--hidden",
        "16",
        "--layers",
        "1",
        "--seq-len",
        "16",
        "--batch",
        "5",
        "--device",
        "cpu",
        "--sample-len",
        "20",
    ]
    .map(String::from)
    .to_vec()
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|a| a.to_string()));
    args
}

/// What a command printed, for messages.
fn show(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `unfold args` in one process (no MPI), `env` added.
fn one(args: &[String], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unfold"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("unfold runs")
}

/// `mpirun -np np unfold args`, `env` added (and passed to every rank with `-x`).
fn mpirun(np: usize, args: &[String], env: &[(&str, &str)]) -> Output {
    let prefix = mpirun_prefix();
    let mut command = Command::new(&prefix[0]);
    command.args(&prefix[1..]).args(["-np", &np.to_string()]);
    for (k, _) in env {
        command.args(["-x", k]);
    }
    command
        .arg(env!("CARGO_BIN_EXE_unfold"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("mpirun runs")
}

fn succeeded(what: &str, out: Output) -> Result<Output, String> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("{what} failed: {}", show(&out)))
    }
}

/// The `--metrics` lines.
fn metrics(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{l:?}: {e}")))
        .collect()
}

/// Step number and loss of each step line.
fn losses(lines: &[serde_json::Value]) -> Vec<(u64, f64)> {
    lines
        .iter()
        .filter_map(|l| Some((l["step"].as_u64()?, l["loss"].as_f64()?)))
        .collect()
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

/// The losses of two runs step by step: the same steps, within `tolerance`.
fn same_losses(got: &[(u64, f64)], want: &[(u64, f64)], tolerance: f64) -> Result<f64, String> {
    let steps = |l: &[(u64, f64)]| l.iter().map(|p| p.0).collect::<Vec<_>>();
    if steps(got) != steps(want) {
        return Err(format!("steps {:?} against {:?}", steps(got), steps(want)));
    }
    let mut worst = 0f64;
    for ((step, a), (_, b)) in got.iter().zip(want) {
        let rel = relative(*a, *b);
        worst = worst.max(rel);
        if rel > tolerance {
            return Err(format!("step {step}: loss {a} against {b} ({rel:.1e})"));
        }
    }
    Ok(worst)
}

/// Every f32 tensor of a safetensors file, by name.
fn tensors(path: &Path) -> Result<Vec<(String, Vec<f32>)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
    let mut out: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let values = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Two checkpoints' weights (`model.safetensors`) and streams' state agree: the largest
/// difference against the largest magnitude, within `tolerance` (ten times that for the
/// states, which the last step's forward pass computed from slightly different weights).
fn same_checkpoint(a: &Path, b: &Path, tolerance: f64) -> Result<String, String> {
    let mut report = Vec::new();
    for (file, keep, tolerance) in [
        ("model.safetensors", None, tolerance),
        ("state.safetensors", Some("streams."), 10.0 * tolerance),
    ] {
        let (x, y) = (tensors(&a.join(file))?, tensors(&b.join(file))?);
        let pick = |t: Vec<(String, Vec<f32>)>| -> Vec<(String, Vec<f32>)> {
            t.into_iter()
                .filter(|(n, _)| keep.is_none_or(|k| n.starts_with(k)))
                .collect()
        };
        let (x, y) = (pick(x), pick(y));
        let names = |t: &[(String, Vec<f32>)]| t.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
        if names(&x) != names(&y) || x.is_empty() {
            return Err(format!(
                "{file}: tensors {:?} against {:?}",
                names(&x),
                names(&y)
            ));
        }
        let (mut diff, mut scale) = (0f64, 0f64);
        for ((_, p), (_, q)) in x.iter().zip(&y) {
            if p.len() != q.len() {
                return Err(format!("{file}: sizes differ"));
            }
            for (u, v) in p.iter().zip(q) {
                diff = diff.max((u - v).abs() as f64);
                scale = scale.max(v.abs() as f64);
            }
        }
        if diff > tolerance * scale {
            return Err(format!(
                "{file} of {} and {} differ by {diff:.2e} (largest {scale:.3})",
                a.display(),
                b.display()
            ));
        }
        report.push(format!("{file} rel. {:.1e}", diff / scale));
    }
    Ok(report.join(", "))
}

fn record(dir: &Path) -> Result<serde_json::Value, String> {
    let path = dir.join("checkpoint.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

/// The one-process reference: 8 steps, metrics and checkpoint in `dir/one`.
fn reference(dir: &Path, text: &Path) -> Result<(PathBuf, Vec<(u64, f64)>), String> {
    let (out, m) = (dir.join("one"), dir.join("one.jsonl"));
    let args = with(
        train_args(text),
        &[
            "--out",
            s(&out),
            "--steps",
            "8",
            "--eval-every",
            "4",
            "--metrics",
            s(&m),
        ],
    );
    succeeded("one process", one(&args, &[]))?;
    Ok((out, losses(&metrics(&m)?)))
}

/// Two ranks train the same 8 steps as one process: the same losses, weights and
/// streams' state; rank 0 alone prints and writes.
fn train_matches() -> Outcome {
    let dir = scratch("matches");
    let text = small_text(&dir);
    let (one_dir, want) = reference(&dir, &text)?;
    let (out, m) = (dir.join("two"), dir.join("two.jsonl"));
    let args = with(
        train_args(&text),
        &[
            "--out",
            s(&out),
            "--steps",
            "8",
            "--eval-every",
            "4",
            "--metrics",
            s(&m),
        ],
    );
    let run = succeeded("mpirun -np 2", mpirun(2, &args, &[]))?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let summaries = stdout
        .lines()
        .filter(|l| l.starts_with("done: 8 steps"))
        .count();
    let headers = stdout.lines().filter(|l| l.starts_with("model: ")).count();
    if summaries != 1 || headers != 1 {
        return Err(format!(
            "{summaries} summaries and {headers} headers printed, expected 1 each (rank 0 alone): {}",
            show(&run)
        ));
    }
    let worst = same_losses(&losses(&metrics(&m)?), &want, TOLERANCE)?;
    let weights = same_checkpoint(&out, &one_dir, TOLERANCE)?;
    let steps = record(&out)?["progress"]["step"].clone();
    if steps != 8 {
        return Err(format!("the checkpoint is at step {steps}, expected 8"));
    }
    if !out.join("loss.svg").is_file() {
        return Err("no loss plot".into());
    }
    Ok(format!("[losses rel. {worst:.1e}; {weights}]"))
}

/// A 2-rank checkpoint resumed by one process, and that one resumed by 3 ranks: the
/// same 8 steps as one process throughout.
fn resume_across_rank_counts() -> Outcome {
    let dir = scratch("resume");
    let text = small_text(&dir);
    let (one_dir, want) = reference(&dir, &text)?;
    let (out, m) = (dir.join("mixed"), dir.join("mixed.jsonl"));
    let first = with(
        train_args(&text),
        &[
            "--out",
            s(&out),
            "--steps",
            "3",
            "--eval-every",
            "4",
            "--metrics",
            s(&m),
        ],
    );
    succeeded("2 ranks, steps 1-3", mpirun(2, &first, &[]))?;
    let resume = |steps: &str| -> Vec<String> {
        [
            "train",
            "--resume",
            s(&out),
            "--steps",
            steps,
            "--metrics",
            s(&m),
        ]
        .map(String::from)
        .to_vec()
    };
    let run = succeeded("1 process, steps 4-6", one(&resume("3"), &[]))?;
    if !String::from_utf8_lossy(&run.stdout).contains("resuming at step 3") {
        return Err(format!("not resumed at step 3: {}", show(&run)));
    }
    succeeded("3 ranks, steps 7-8", mpirun(3, &resume("2"), &[]))?;
    let worst = same_losses(&losses(&metrics(&m)?), &want, TOLERANCE)?;
    let weights = same_checkpoint(&out, &one_dir, TOLERANCE)?;
    Ok(format!(
        "[2 -> 1 -> 3 ranks: losses rel. {worst:.1e}; {weights}]"
    ))
}

/// The step of the checkpoint `--resume` takes from `dir`, after resuming one step from
/// it with `np` ranks (1: no MPI).
fn resumes(dir: &Path, np: usize) -> Result<u64, String> {
    let args: Vec<String> = ["train", "--resume", s(dir), "--steps", "1"]
        .map(String::from)
        .to_vec();
    let out = if np == 1 {
        one(&args, &[])
    } else {
        mpirun(np, &args, &[])
    };
    let out = succeeded("resuming", out)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    stdout
        .split("resuming at step ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no \"resuming at step\": {stdout}"))
}

/// A rank whose own work fails (here: injected before step 5) ends the job with a
/// message naming it; the checkpoint of step 4 (or, were rank 0 killed while writing
/// it, the one before) stays whole and resumes.
fn failing_rank() -> Outcome {
    let dir = scratch("failing");
    let text = small_text(&dir);
    let out = dir.join("ck");
    let args = with(
        train_args(&text),
        &["--out", s(&out), "--steps", "8", "--eval-every", "2"],
    );
    let run = mpirun(2, &args, &[("UNFOLD_TEST_FAULT", "fail:1:5")]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    if run.status.success()
        || !stderr.contains("error: rank 1 of 2: UNFOLD_TEST_FAULT")
        || !stderr.contains("aborting the MPI job")
    {
        return Err(format!("expected rank 1 to end the job: {}", show(&run)));
    }
    let step = resumes(&out, 1)?;
    if step != 4 && step != 2 {
        return Err(format!("resumed at step {step}, expected 4 (or 2)"));
    }
    Ok(format!("[resumed at step {step}]"))
}

/// A rank killed by a signal (before step 3): mpirun ends the job and names the rank;
/// the checkpoint of step 2 (or the one before) resumes on 2 ranks.
fn crashed_rank() -> Outcome {
    let dir = scratch("crashed");
    let text = small_text(&dir);
    let out = dir.join("ck");
    let args = with(
        train_args(&text),
        &["--out", s(&out), "--steps", "8", "--eval-every", "2"],
    );
    let run = mpirun(2, &args, &[("UNFOLD_TEST_FAULT", "crash:1:3")]);
    let all = show(&run);
    if run.status.success() || !all.contains("rank 1") {
        return Err(format!(
            "expected mpirun to end the job naming rank 1: {all}"
        ));
    }
    let step = resumes(&out, 2)?;
    if step != 2 && step != 0 {
        return Err(format!("resumed at step {step}, expected 2 (or 0)"));
    }
    Ok(format!("[resumed at step {step}]"))
}

/// Ranks given different texts stop at the start, every one with the same message, and
/// write nothing.
fn disagreeing_ranks() -> Outcome {
    let dir = scratch("disagree");
    let text = small_text(&dir);
    let other = dir.join("other.txt");
    let changed = std::fs::read_to_string(&text)
        .map_err(|e| e.to_string())?
        .replacen("the", "The", 1);
    std::fs::write(&other, changed).map_err(|e| e.to_string())?;
    let out = dir.join("ck");
    let rank = |t: &Path| with(train_args(t), &["--out", s(&out), "--steps", "2"]);
    // MPMD: rank 0 reads one text, rank 1 the other
    let prefix = mpirun_prefix();
    let run = Command::new(&prefix[0])
        .args(&prefix[1..])
        .args(["-np", "1", env!("CARGO_BIN_EXE_unfold")])
        .args(rank(&text))
        .args([":", "-np", "1", env!("CARGO_BIN_EXE_unfold")])
        .args(rank(&other))
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    let message = "the ranks do not run the same model, so none starts: rank 1 disagrees with rank 0 on the run's fingerprint";
    if run.status.success() || stderr.matches(message).count() != 2 {
        return Err(format!(
            "expected the same refusal on both ranks: {}",
            show(&run)
        ));
    }
    if out.exists() {
        return Err(format!("{} was created", out.display()));
    }
    Ok(String::new())
}

/// The numbers after `key` in each line that has it.
fn numbers_after(text: &str, key: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| l.split(key).nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `classify` on 2 ranks, each minibatch split across them: the same epoch losses and
/// test accuracy as one process (as printed: 4 and 3 decimals); rank 0 alone prints.
fn classify_matches() -> Outcome {
    let args: Vec<String> = [
        "classify", "--epochs", "2", "--hidden", "8", "--batch", "16", "--device", "cpu",
    ]
    .map(String::from)
    .to_vec();
    let want = succeeded("one process", one(&args, &[]))?;
    let got = succeeded("mpirun -np 2", mpirun(2, &args, &[]))?;
    let (want, got) = (
        String::from_utf8_lossy(&want.stdout).into_owned(),
        String::from_utf8_lossy(&got.stdout).into_owned(),
    );
    if got.matches("test accuracy").count() != 1 {
        return Err(format!("rank 0 alone should print: {got}"));
    }
    let (a, b) = (
        numbers_after(&got, " loss "),
        numbers_after(&want, " loss "),
    );
    if a.len() != b.len() || a.is_empty() || a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 2e-4) {
        return Err(format!("losses {a:?} against one process's {b:?}"));
    }
    let (x, y) = (
        numbers_after(&got, "test accuracy: "),
        numbers_after(&want, "test accuracy: "),
    );
    // one prediction in 370 may flip on f32 rounding
    if x.len() != 1 || y.len() != 1 || (x[0] - y[0]).abs() > 0.004 {
        return Err(format!("test accuracy {x:?} against {y:?}"));
    }
    Ok(format!("[losses {a:?}]"))
}

/// Two ranks on a machine with one adapter share it (`--device gpu`), and train as one
/// process on the CPU path does, to the GPU's rounding.
fn gpu_ranks_share_an_adapter() -> Outcome {
    let required = std::env::var("UNFOLD_REQUIRE_GPU").as_deref() == Ok("1");
    if std::env::var("UNFOLD_MPI_GPU").as_deref() == Ok("0") {
        return Ok("SKIPPED: UNFOLD_MPI_GPU=0".into());
    }
    if let Err(e) = unfold::Device::gpu() {
        return if required {
            Err(format!("UNFOLD_REQUIRE_GPU=1: no GPU: {e}"))
        } else {
            Ok(format!("SKIPPED: no GPU: {e}"))
        };
    }
    let dir = scratch("gpu");
    let text = small_text(&dir);
    let (cpu, gpu) = (dir.join("cpu.jsonl"), dir.join("gpu.jsonl"));
    let steps = ["--steps", "3", "--eval-every", "100"];
    let cpu_args = with(
        train_args(&text),
        &[
            &steps[..],
            &["--out", s(&dir.join("cpu")), "--metrics", s(&cpu)],
        ]
        .concat(),
    );
    succeeded("one process on the CPU", one(&cpu_args, &[]))?;
    let mut gpu_args = with(
        train_args(&text),
        &[
            &steps[..],
            &["--out", s(&dir.join("gpu")), "--metrics", s(&gpu)],
        ]
        .concat(),
    );
    let at = gpu_args
        .iter()
        .position(|a| a == "cpu")
        .expect("--device cpu");
    gpu_args[at] = "gpu".into();
    let run = succeeded("mpirun -np 2 --device gpu", mpirun(2, &gpu_args, &[]))?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    let adapters: Vec<&str> = (0..2)
        .filter_map(|r| {
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("rank {r} (local {r} of 2): using GPU")))?;
            line.split("using ").nth(1)
        })
        .collect();
    if adapters.len() != 2 || adapters[0] != adapters[1] {
        return Err(format!("each rank should name the one adapter: {stderr}"));
    }
    let worst = same_losses(&losses(&metrics(&gpu)?), &losses(&metrics(&cpu)?), 1e-4)?;
    Ok(format!(
        "[both ranks on {}; losses rel. {worst:.1e} against the CPU path]",
        adapters[0]
    ))
}
