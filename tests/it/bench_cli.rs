//! The `bench` and `devices` subcommands of the built binary: JSON lines for training
//! steps and for matrix products, a clean failure on a bad shape, and a quiet adapter
//! probe.

use crate::common;

use common::{assert_clean_failure, stderr, stdout, unfold};
use serde_json::Value;
use unfold::internals::gpu::GemmPlan;
use unfold::internals::workloads::Workload;
use unfold::{Cell, Device};

fn json_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with('{')).collect()
}

/// The JSON lines of `text`, parsed.
fn rows(text: &str) -> Vec<Value> {
    json_lines(text)
        .into_iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn number(row: &Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{row} lacks the number {field}"))
}

/// The two lines of `bench --configs <name> --device cpu --cell <cell>`, each checked
/// against the workload it ran, worked out here: its shape, fixed then variable length,
/// a positive time, and tokens per second and GFLOP/s that agree with that time and with
/// the batch's valid positions and the cell's products (G gate blocks per recurrent
/// product, the readout once; forward 2 flops per multiply-add, backward twice that).
fn check_step_lines(text: &str, name: &str, cell: Cell) {
    let w = Workload::named(name).expect("a workload");
    let rows = rows(text);
    assert_eq!(rows.len(), 2, "fixed and variable length: {text}");
    for (row, variable) in rows.iter().zip([false, true]) {
        assert_eq!(row["impl"], "unfold", "{row}");
        assert_eq!(row["device"], Device::cpu().describe(), "{row}");
        assert_eq!(row["config"], name, "{row}");
        assert_eq!(row["cell"], cell.name(), "{row}");
        assert_eq!(row["time_loop"], "Auto", "{row}");
        assert_eq!(row["variable"], variable, "{row}");
        for (field, want) in [
            ("B", w.batch),
            ("T", w.steps),
            ("I", w.input),
            ("H", w.hidden),
            ("C", w.classes),
        ] {
            assert_eq!(row[field].as_u64(), Some(want as u64), "{field}: {row}");
        }
        let ms = number(row, "train_step_ms");
        assert!(ms.is_finite() && ms > 0.0, "{row}");
        // the batch the bench built (seed 0): every sequence of T steps, or lengths in
        // [T/2, T] with the first one of T
        let tokens = w.batch(variable, 0).tokens() as f64;
        if variable && w.batch > 1 {
            assert!(tokens < (w.batch * w.steps) as f64, "{tokens}");
        } else {
            assert_eq!(tokens, (w.batch * w.steps) as f64);
        }
        // the time is printed to the microsecond, tokens/s to the unit, GFLOP/s to 0.1
        let rounding = 0.6e-3 / ms + 1e-6;
        let tokens_per_s = number(row, "tokens_per_s");
        let implied = tokens_per_s * ms / 1e3;
        assert!(
            (implied - tokens).abs() <= rounding * tokens + 1.0,
            "{tokens} valid positions, but {tokens_per_s} tokens/s in {ms} ms: {row}"
        );
        let (g, i, h, c) = (cell.gates(), w.input, w.hidden, w.classes);
        let flops_per_token = 6.0 * (g * (i * h + h * h) + h * c) as f64;
        let gflops = number(row, "gflops");
        let want = tokens_per_s * flops_per_token / 1e9;
        assert!(
            (gflops - want).abs() <= 0.051 + 1e-4 * want,
            "{gflops} GFLOP/s where {tokens_per_s} tokens/s of {flops_per_token} flops make {want}: {row}"
        );
        // the CPU path records no GPU work
        assert_eq!(number(row, "host_record_ms"), 0.0, "{row}");
        assert_eq!(row["dispatches"].as_u64(), Some(0), "{row}");
    }
}

/// The lines of `bench --matmul`: `count` lines for each `(m, n, k)` in order, on
/// `device`, each with a positive time and the TFLOP/s that `2·m·n·k` flops in that time
/// make (the time printed to 0.1 µs, TFLOP/s to 0.001).
fn check_matmul_lines(text: &str, shapes: &[(usize, usize, usize, usize)], device: &Device) {
    let rows = rows(text);
    let want: Vec<(usize, usize, usize)> = shapes
        .iter()
        .flat_map(|&(m, n, k, count)| std::iter::repeat_n((m, n, k), count))
        .collect();
    assert_eq!(rows.len(), want.len(), "{text}");
    for (row, (m, n, k)) in rows.iter().zip(want) {
        assert_eq!(row["impl"], "unfold", "{row}");
        assert_eq!(row["device"], device.describe(), "{row}");
        assert_eq!(row["matmul"], format!("{m}x{n}x{k}"), "{row}");
        let ms = number(row, "ms");
        assert!(ms.is_finite() && ms > 0.0, "{row}");
        let tflops = number(row, "tflops");
        let want = 2.0 * (m * n * k) as f64 / (ms * 1e9);
        assert!(
            (tflops - want).abs() <= 0.00051 + want * 0.6e-4 / ms,
            "{tflops} TFLOP/s where {m}x{n}x{k} in {ms} ms make {want}: {row}"
        );
    }
}

#[test]
fn training_steps_on_the_cpu() {
    let out = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--configs",
        "latency",
        "--reps",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    check_step_lines(&stdout(&out), "latency", Cell::Tanh);
}

#[test]
fn each_line_records_the_cell() {
    let out = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--configs",
        "small",
        "--reps",
        "1",
        "--cell",
        "lstm",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // an LSTM's step does four times a tanh cell's recurrent products; sixteen
    // sequences of different lengths make the variable-length batch smaller
    check_step_lines(&stdout(&out), "small", Cell::Lstm);
    let out = unfold(&["bench", "--device", "cpu", "--cell", "elman"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("elman"), "{}", stderr(&out));
}

#[test]
fn devices_lists_adapters_without_window_system_noise() {
    // where XDG_RUNTIME_DIR is unset, Mesa's Vulkan device-select layer probing for a
    // Wayland display used to print an error per Vulkan instance
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_unfold"))
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("the unfold binary runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("XDG_RUNTIME_DIR"),
        "{}",
        stderr(&out)
    );
    // one line per adapter, then the device `--device auto` takes: the one the library
    // picks in this environment (the tests' adapter when WGPU_ADAPTER_NAME names it)
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    let auto = Device::auto();
    assert_eq!(
        lines.last().copied(),
        Some(format!("auto picks: {}", auto.describe()).as_str()),
        "{text}"
    );
    let adapters = &lines[..lines.len() - 1];
    if let Some(gpu) = common::gpu() {
        // "GPU name (backend, type)" is listed as "name (backend, type)"
        let listed = gpu.describe().trim_start_matches("GPU ").to_string();
        assert!(adapters.contains(&listed.as_str()), "{listed}: {text}");
        if auto.is_gpu() {
            assert_eq!(auto.describe(), gpu.describe(), "{text}");
        }
    } else {
        assert!(!auto.is_gpu(), "{text}");
    }
    assert!(
        !adapters.is_empty(),
        "an adapter or how to install one: {text}"
    );
}

#[test]
fn matrix_products_on_the_cpu_and_each_gpu_tiling() {
    let out = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--matmul",
        "8x8x8,3x5x7",
        "--reps",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    // the CPU path's own product, then ndarray's, for each shape
    assert_eq!(json_lines(&text).len(), 4, "{text}");
    for plan in ["cpu path (gemm-f32)", "ndarray"] {
        assert!(
            text.contains(&format!("\"matmul\": \"3x5x7\", \"plan\": \"{plan}\"")),
            "{text}"
        );
    }
    check_matmul_lines(&text, &[(8, 8, 8, 2), (3, 5, 7, 2)], &Device::cpu());
    if common::gpu().is_none() {
        return;
    }
    let out = unfold(&[
        "bench",
        "--device",
        "gpu",
        "--matmul",
        "70x9x600,9x70x40",
        "--reps",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines = json_lines(&text);
    // K = 600: the library's plan, then each tiling unsplit and split 2, 4 and 8 ways;
    // K = 40, too short to split: the library's plan and each tiling
    let plans: Vec<String> = lines
        .iter()
        .map(|l| {
            l.split("\"plan\": \"")
                .nth(1)
                .unwrap_or("")
                .split('"')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    // the library's own choice for the shape, as the GPU path would run it
    let auto = GemmPlan::choose(70, 9, 600);
    let mut want = vec![format!("auto: {:?} splits {}", auto.tile, auto.splits)];
    for tile in ["Tile32", "Tile64", "Tile128"] {
        want.extend([1, 2, 4, 8].map(|s| format!("{tile} splits {s}")));
    }
    want.extend(
        [
            "auto: Tile64 splits 1",
            "Tile32 splits 1",
            "Tile64 splits 1",
            "Tile128 splits 1",
        ]
        .map(String::from),
    );
    assert_eq!(plans, want, "{text}");
    let gpu = common::gpu().expect("the GPU the bench ran on");
    check_matmul_lines(&text, &[(70, 9, 600, 13), (9, 70, 40, 4)], &gpu);
}

#[test]
fn the_time_loop_is_reported_and_bad_ones_refused() {
    // (the loops themselves are checked against the CPU path in gpu_parity.rs)
    let args = |device| {
        let tiny = [
            "--configs",
            "2x3x4x8x5",
            "--lengths",
            "fixed",
            "--reps",
            "1",
        ];
        let loop_ = ["--time-loop", "tiled-steps"];
        [&["bench", "--device", device][..], &tiny[..], &loop_[..]].concat()
    };
    // the CPU path has one time loop
    assert_clean_failure(&unfold(&args("cpu")), "--time-loop");
    let out = unfold(&["bench", "--device", "cpu", "--time-loop", "sideways"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sideways"), "{}", stderr(&out));
    if common::gpu().is_none() {
        return;
    }
    let out = unfold(&args("gpu"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"time_loop\": \"TiledSteps\""),
        "{}",
        stdout(&out)
    );
}

#[test]
fn any_workload_shape_runs_with_its_memory_and_bad_ones_are_refused() {
    let out = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--configs",
        "3x5x4x6x2,64x100x128x512x128",
        "--lengths",
        "fixed",
        "--reps",
        "1",
        "--cell",
        "gru",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines = json_lines(&text);
    // one line per workload (fixed lengths only), the anchor's shape named as the anchor
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("\"config\": \"3x5x4x6x2\""), "{text}");
    assert!(lines[0].contains("\"B\": 3, \"T\": 5, \"I\": 4, \"H\": 6, \"C\": 2"));
    assert!(lines[0].contains("\"variable\": false"));
    assert!(lines[1].contains("\"config\": \"ref\""), "{text}");
    // ref's buffers alone are tens of MB: the process grew by at least that (Linux)
    let memory: u64 = lines[1]
        .split("\"memory_bytes\": ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|v| v.parse().ok())
        .expect("a memory figure");
    assert!(memory > 10 << 20, "{memory} bytes for ref: {text}");
    for bad in ["3x5x4x6", "3x5x0x6x2", "huge"] {
        let out = unfold(&["bench", "--device", "cpu", "--configs", bad]);
        assert_clean_failure(&out, "BxTxIxHxC");
    }
}

#[test]
fn autotuning_reports_what_it_kept() {
    let Some(_gpu) = common::gpu() else { return };
    let out = unfold(&[
        "bench",
        "--device",
        "gpu",
        "--configs",
        "4x6x5x300x3",
        "--lengths",
        "variable",
        "--reps",
        "1",
        "--autotune",
        "20",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (text, report) = (stdout(&out), stderr(&out));
    assert!(text.contains("\"autotuned\": true"), "{text}");
    assert!(text.contains("\"variable\": true") && !text.contains("\"variable\": false"));
    assert!(report.contains("product shapes tuned"), "{report}");
    // hidden 300 is past the persistent loop: both step-wise loops were timed, and the
    // one reported is the one kept (the faster)
    let first = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("time loop "))
        .and_then(|l| l.split(':').next())
        .expect("time loops timed");
    assert!(
        text.contains(&format!("\"time_loop\": \"{first}\"")),
        "{text}\n{report}"
    );
}

#[test]
fn a_profile_says_where_each_phase_of_a_step_went() {
    let refused = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--configs",
        "latency",
        "--profile",
    ]);
    assert_clean_failure(&refused, "--profile");
    let Some(_gpu) = common::gpu() else { return };
    let out = unfold(&[
        "bench",
        "--device",
        "gpu",
        "--configs",
        "4x6x5x40x3",
        "--lengths",
        "fixed",
        "--reps",
        "1",
        "--profile",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = rows(&stdout(&out));
    let (kernels, steps): (Vec<&Value>, Vec<&Value>) =
        rows.iter().partition(|r| r.get("profile").is_some());
    assert_eq!(steps.len(), 1, "one timed workload");
    assert!(!kernels.is_empty());
    for r in &kernels {
        assert_eq!(r["profile"], "4x6x5x40x3", "{r}");
        assert_eq!(r["autotuned"], false, "{r}");
        assert!(
            number(r, "calls") >= 1.0 && number(r, "total_ms") >= 0.0,
            "{r}"
        );
        assert!(r["kernel"].as_str().is_some_and(|k| !k.is_empty()), "{r}");
    }
    let share: f64 = kernels.iter().map(|r| number(r, "share")).sum();
    assert!((share - 1.0).abs() < 1e-2, "shares add up to {share}");
    for phase in ["layer 0: time loop, forward", "gradient norm and update"] {
        assert!(kernels.iter().any(|r| r["phase"] == phase), "no {phase}");
    }
    assert!(
        stderr(&out).contains("where the GPU's time went"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_rows_say_whether_each_step_uploaded_its_batch() {
    for device in ["cpu"].into_iter().chain(common::gpu().map(|_| "gpu")) {
        for (flag, want) in [
            (None, "first step"),
            (Some("--upload-each-step"), "every step"),
        ] {
            let mut args = vec![
                "bench",
                "--device",
                device,
                "--configs",
                "3x4x2x5x3",
                "--lengths",
                "fixed",
                "--reps",
                "2",
            ];
            args.extend(flag);
            let out = unfold(&args);
            assert!(out.status.success(), "{}", stderr(&out));
            let rows = rows(&stdout(&out));
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0]["batch_upload"], want, "{device} {flag:?}");
            assert!(number(&rows[0], "train_step_ms") > 0.0);
        }
    }
}

#[test]
fn a_bad_shape_is_refused() {
    let out = unfold(&["bench", "--device", "cpu", "--matmul", "64x64"]);
    assert_clean_failure(&out, "MxNxK");
}

/// Work no machine can hold is an error before anything is allocated, not an abort; so
/// are counts of zero and what only a GPU has, asked of the CPU path.
#[test]
fn impossible_sizes_zero_counts_and_gpu_settings_on_the_cpu_are_refused() {
    let cpu = ["bench", "--device", "cpu"];
    let cases: [(&[&str], &str); 5] = [
        (&["--matmul", "100000x100000x100000"], "GB"),
        (&["--configs", "100000x100000x100000x100000x1"], "GB"),
        (&["--configs", "latency", "--reps", "0"], "at least 1"),
        (&["--configs", "latency", "--autotune", "1"], "--autotune"),
        (
            &["--configs", "latency", "--time-loop", "persistent"],
            "--time-loop",
        ),
    ];
    for (args, needle) in cases {
        let out = unfold(&[&cpu[..], args].concat());
        assert_clean_failure(&out, needle);
        assert_eq!(stdout(&out), "", "{args:?}");
    }
}

/// Output into a pipe whose reader has gone ends the process quietly, as SIGPIPE ends
/// Unix tools (it had panicked: "failed printing to stdout").
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_the_process_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_unfold"))
        .args([
            "bench",
            "--device",
            "cpu",
            "--matmul",
            "8x8x8,8x8x8,8x8x8",
            "--reps",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the unfold binary runs");
    drop(child.stdout.take()); // the reader goes before the first line
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(13),
        "SIGPIPE: {:?} {err}",
        out.status
    );
}

#[test]
fn mixed_precision_needs_a_gpu_and_does_not_combine_with_unchecked_shaders() {
    let cpu = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--mixed-precision",
        "--configs",
        "1x2x3x4x5",
    ]);
    assert_clean_failure(&cpu, "--mixed-precision");
    let both = unfold(&[
        "bench",
        "--device",
        "gpu",
        "--mixed-precision",
        "--unchecked-shaders",
        "--configs",
        "1x2x3x4x5",
    ]);
    assert_clean_failure(&both, "--mixed-precision");
    // on an adapter without cooperative matrices (Debian 12's lavapipe), a clear error
    // that says what is missing
    if common::gpu().is_some_and(|_| common::mixed_gpu().is_none()) {
        let out = unfold(&[
            "bench",
            "--device",
            "gpu",
            "--mixed-precision",
            "--configs",
            "1x2x3x4x5",
        ]);
        assert_clean_failure(&out, "cooperative matri");
    }
}
