//! What `train` prints: the run's description before it starts, and its summary at the
//! end.

use super::checkpoint::BEST_DIR;
use super::trainer::Trainer;
use crate::cli::parallel;
use std::path::Path;

/// The lines before training: the text, the model, the training settings, where the
/// checkpoints go.
pub fn print_header(t: &Trainer, device: &str, resumed_from: Option<&Path>) {
    let hyper = &t.meta.config;
    let config = t.rnn.config();
    println!(
        "{}: {} characters, {} distinct; training on {}, {} held out",
        t.text_name,
        t.meta.data.chars,
        config.input_size,
        t.corpus.train().len(),
        t.corpus.held_out().len()
    );
    let mut dropout = if hyper.dropout > 0.0 {
        format!(", dropout {} between layers", hyper.dropout)
    } else {
        String::new()
    };
    if hyper.out_dropout > 0.0 {
        dropout += &format!(", {} before the readout", hyper.out_dropout);
    }
    println!(
        "model: {} {} layer(s) of {} units{dropout}, {} parameters, on {device}",
        hyper.layers,
        hyper.cell,
        hyper.hidden,
        config.num_params(),
    );
    if hyper.dropout > 0.0 && hyper.layers == 1 && parallel::is_root() {
        eprintln!("warning: --dropout acts between layers: with one layer it does nothing");
    }
    let start = match resumed_from.filter(|_| t.resuming()) {
        Some(dir) => format!(
            "resuming at step {} from {}",
            t.meta.progress.step,
            dir.display()
        ),
        None => "from scratch".to_string(),
    };
    println!(
        "training: {} streams x {} steps per chunk ({} chunks per pass), {}{}, lr {} ({} schedule), clip {}, seed {}; {start}",
        hyper.batch,
        hyper.seq_len,
        t.streams.chunks_per_pass(),
        hyper.optimizer,
        if hyper.weight_decay > 0.0 { format!(" (weight decay {})", hyper.weight_decay) } else { String::new() },
        hyper.lr,
        hyper.schedule,
        if hyper.clip == 0.0 { "off".to_string() } else { hyper.clip.to_string() },
        hyper.seed,
    );
    if let Some(job) = parallel::job() {
        let (fewest, most) = (hyper.batch / job.size, hyper.batch.div_ceil(job.size));
        println!(
            "data-parallel over {} MPI ranks: each trains {} of the {} streams per step",
            job.size,
            if fewest == most {
                fewest.to_string()
            } else {
                format!("{fewest} or {most}")
            },
            hyper.batch
        );
    }
    println!("checkpoints and plot: {}", t.out.display());
}

/// The plot's title: the text and the model.
pub fn plot_title(t: &Trainer) -> String {
    let hyper = &t.meta.config;
    format!(
        "{}: {} x {} {}, {}",
        t.text_name, hyper.layers, hyper.hidden, hyper.cell, hyper.optimizer
    )
}

/// The last line: this run's steps, time and speed, the latest and best losses, where
/// the checkpoint and plot are.
pub fn summary(t: &Trainer, plot: &Path) -> String {
    let elapsed = t.run.started.elapsed().as_secs_f64();
    let last = t.meta.history.last();
    let loss = |l: Option<f32>| l.map_or("-".into(), |l| format!("{l:.3}"));
    let best = t.best();
    format!(
        "done: {} steps ({} characters) in {} on {}, {} chars/s; step {}: train loss {}, held-out loss {} nats/char{}; checkpoint {}, plot {}",
        t.run.steps,
        format_count(t.run.tokens as f64),
        format_duration(elapsed),
        t.device_name,
        format_count(t.run.tokens as f64 / elapsed.max(1e-9)),
        t.meta.progress.step,
        loss(last.and_then(|p| p.train_loss)),
        loss(last.and_then(|p| p.held_out_loss)),
        best.map_or(String::new(), |(l, s)| format!(
            " (best {l:.3} at step {s}, kept in {})",
            t.out.join(BEST_DIR).display()
        )),
        t.out.display(),
        plot.display()
    )
}

/// `m:ss`, or `h:mm:ss` from an hour.
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// `87.3k`, `52.4M`.
pub fn format_count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}
