//! The `bench` and `devices` subcommands of the built binary: JSON lines for training
//! steps and for matrix products, a clean failure on a bad shape, and a quiet adapter
//! probe.

use crate::common;

use common::{assert_clean_failure, stderr, stdout, unfold};

fn json_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with('{')).collect()
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
    let text = stdout(&out);
    let lines = json_lines(&text);
    assert_eq!(lines.len(), 2, "fixed and variable length: {text}");
    for line in lines {
        for field in [
            "\"config\": \"latency\"",
            "\"time_loop\": \"Auto\"",
            "\"cell\": \"tanh\"",
            "\"train_step_ms\": ",
            "\"gflops\": ",
        ] {
            assert!(line.contains(field), "{line} lacks {field}");
        }
    }
}

#[test]
fn each_line_records_the_cell() {
    let out = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--configs",
        "latency",
        "--reps",
        "1",
        "--cell",
        "lstm",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines = json_lines(&text);
    assert_eq!(lines.len(), 2, "fixed and variable length: {text}");
    for line in lines {
        assert!(line.contains("\"cell\": \"lstm\""), "{line}");
        let row: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert_eq!(row["cell"], "lstm");
    }
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
    assert!(stdout(&out).contains("auto picks: "), "{}", stdout(&out));
    assert!(
        !stderr(&out).contains("XDG_RUNTIME_DIR"),
        "{}",
        stderr(&out)
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
    assert_eq!(json_lines(&text).len(), 2, "{text}");
    assert!(
        text.contains("\"matmul\": \"3x5x7\", \"plan\": \"ndarray\""),
        "{text}"
    );
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
    let mut want = vec!["auto: Tile64 splits 4".to_string()];
    for tile in ["Tile64", "Tile128"] {
        want.extend([1, 2, 4, 8].map(|s| format!("{tile} splits {s}")));
    }
    want.extend(
        [
            "auto: Tile64 splits 1",
            "Tile64 splits 1",
            "Tile128 splits 1",
        ]
        .map(String::from),
    );
    assert_eq!(plans, want, "{text}");
}

#[test]
fn the_time_loop_is_reported_and_bad_ones_refused() {
    // (the loops themselves are checked against the CPU path in gpu_parity.rs; on
    // lavapipe a dispatch per step makes this workload take seconds per step)
    let out = unfold(&[
        "bench",
        "--device",
        "cpu",
        "--configs",
        "latency",
        "--reps",
        "1",
        "--time-loop",
        "tiled-steps",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"time_loop\": \"TiledSteps\""),
        "{}",
        stdout(&out)
    );
    let out = unfold(&["bench", "--device", "cpu", "--time-loop", "sideways"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sideways"), "{}", stderr(&out));
}

#[test]
fn a_bad_shape_is_refused() {
    let out = unfold(&["bench", "--device", "cpu", "--matmul", "64x64"]);
    assert_clean_failure(&out, "MxNxK");
}
