//! Choices shared by several commands: device, optimizer, learning-rate schedule, cell,
//! time loop.

use super::parallel;
use clap::ValueEnum;
use unfold::internals::TimeLoop;
use unfold::{Cell, Device, Optimizer};

/// `--device`.
#[derive(Clone, Copy, ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Gpu,
}

/// The device `choice` names. For `auto`, says on stderr which one it took and why. A
/// rank of a data-parallel job, or a process given `UNFOLD_ADAPTER`, takes the GPU of
/// that index (`parallel::gpu_index`) and says which on stderr.
pub fn pick(choice: DeviceChoice) -> unfold::Result<Device> {
    let index = match choice {
        DeviceChoice::Cpu => None,
        _ => parallel::gpu_index()?,
    };
    let Some(index) = index else {
        return Ok(match choice {
            DeviceChoice::Auto => pick_auto(),
            DeviceChoice::Cpu => Device::cpu(),
            DeviceChoice::Gpu => Device::gpu()?,
        });
    };
    let who = parallel::rank_prefix();
    let device = match (choice, Device::gpu_at(index)) {
        (DeviceChoice::Auto, Ok(d))
            if d.is_software() && std::env::var_os("WGPU_ADAPTER_NAME").is_none() =>
        {
            eprintln!(
                "unfold: {who}only a software adapter found ({}); using the CPU path (set WGPU_ADAPTER_NAME to use it anyway)",
                d.describe()
            );
            Device::cpu()
        }
        (DeviceChoice::Auto, Err(e)) => {
            eprintln!("unfold: {who}no usable GPU ({e}); using the CPU path");
            Device::cpu()
        }
        (_, device) => {
            let device = device?;
            eprintln!("unfold: {who}using {}", device.describe());
            device
        }
    };
    Ok(device)
}

/// The GPU, its kernels compiled without bounds checks when `unchecked` (the
/// `--unchecked-shaders` of `verify` and `bench`; `UNFOLD_SHADER_CHECKS` cannot ask for
/// that). Says so on stderr.
pub fn pick_gpu(unchecked: bool) -> unfold::Result<Device> {
    if !unchecked {
        return Device::gpu();
    }
    eprintln!(
        "unfold: kernels compiled without bounds checks (--unchecked-shaders): a kernel bug is undefined behaviour"
    );
    // SAFETY: the user opted in on the command line, as documented at the flag; the
    // contract of `gpu_without_bounds_checks` (no kernel indexes out of range) is what
    // `unfold verify --unchecked-shaders` checks against the CPU path.
    unsafe { Device::gpu_without_bounds_checks() }
}

/// The GPU with its matrix products in mixed precision (`--mixed-precision` of `bench`).
/// Says so on stderr.
pub fn pick_mixed_precision() -> unfold::Result<Device> {
    // SAFETY: the user opted in on the command line, as documented at the flag: wgpu's
    // cooperative matrices are experimental, and the flag's help passes on its caveat.
    let device = unsafe { Device::gpu_mixed_precision()? };
    eprintln!("unfold: using {}", device.describe());
    Ok(device)
}

/// `--device` for a command that also takes `--unchecked-shaders` (and, with `mixed`,
/// `--mixed-precision`): either needs `--device gpu`, and they do not combine.
pub fn pick_checked(choice: DeviceChoice, unchecked: bool, mixed: bool) -> unfold::Result<Device> {
    let flag = if mixed {
        "--mixed-precision"
    } else {
        "--unchecked-shaders"
    };
    match (choice, unchecked, mixed) {
        (_, false, false) => pick(choice),
        (DeviceChoice::Gpu, true, false) => pick_gpu(true),
        (DeviceChoice::Gpu, false, true) => pick_mixed_precision(),
        (DeviceChoice::Gpu, true, true) => Err(unfold::Error::InvalidConfig {
            what: "--unchecked-shaders",
            expected: "without --mixed-precision (the cooperative-matrix kernel is compiled with bounds checks)",
            got: "both".into(),
        }),
        _ => Err(unfold::Error::InvalidConfig {
            what: flag,
            expected: "with --device gpu",
            got: "another device".into(),
        }),
    }
}

/// [`Device::auto`], saying on stderr which device it took (and why not the GPU).
pub fn pick_auto() -> Device {
    let (device, fallback) = Device::auto_with_reason();
    match fallback {
        Some(reason) => eprintln!("unfold: {reason}"),
        None => eprintln!("unfold: using {}", device.describe()),
    }
    device
}

/// `--optimizer`.
#[derive(Clone, Copy, ValueEnum)]
pub enum OptimizerChoice {
    Sgd,
    /// SGD with momentum 0.9.
    Momentum,
    Adam,
}

impl OptimizerChoice {
    /// The name on the command line (and in checkpoints).
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// A count that must be at least 1 (`--reps`, `--patience`, `--eval-every`, `--pool`,
/// `verify --steps`), as a clap value parser: 0 is refused with the reason, not taken as
/// 1 or as "every time".
pub fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

/// An optimizer from the command line; a clip of 0 means no clipping. A weight decay
/// makes Adam AdamW (decoupled); SGD and momentum do not take one.
pub fn make_optimizer(
    choice: OptimizerChoice,
    lr: f32,
    clip: f32,
    weight_decay: f32,
) -> Result<Optimizer, String> {
    let optimizer = match choice {
        OptimizerChoice::Adam => Optimizer::adamw(lr, weight_decay),
        _ if weight_decay != 0.0 => {
            return Err(format!(
                "--weight-decay {weight_decay} needs --optimizer adam (AdamW's decoupled decay)"
            ))
        }
        OptimizerChoice::Sgd => Optimizer::sgd(lr),
        OptimizerChoice::Momentum => Optimizer::sgd_momentum(lr, 0.9),
    };
    Ok(if clip == 0.0 {
        optimizer
    } else {
        optimizer.clip_grad_norm(clip)
    })
}

/// How the learning rate moves over a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Schedule {
    /// The learning rate throughout.
    Constant,
    /// A linear warm-up over the model's first 100 steps, then a cosine decay to a
    /// twentieth of the learning rate at the end of the run (`train`: its steps or
    /// minutes, a resumed run decaying over its own budget again, from the peak;
    /// `classify`: its epochs, the warm-up at most a tenth of them).
    Cosine,
}

impl Schedule {
    /// The name on the command line (and in checkpoints and results).
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Cosine => "cosine",
        }
    }

    /// The schedule a checkpoint names (unknown names are an error).
    pub fn from_name(name: &str) -> Result<Schedule, String> {
        <Schedule as clap::ValueEnum>::from_str(name, true)
            .map_err(|_| format!("unknown learning-rate schedule {name:?} in the checkpoint"))
    }

    /// The factor on the learning rate at `step` of a run `done` (0 to 1) of the way
    /// through its budget.
    pub fn factor(self, step: u64, done: f64) -> f32 {
        self.factor_with_warmup(step, done, WARMUP_STEPS)
    }

    /// As [`Schedule::factor`], over a run of `total` steps known in advance: the
    /// warm-up takes at most a tenth of them.
    pub fn factor_of_run(self, step: u64, total: u64) -> f32 {
        let warmup = WARMUP_STEPS.min(total / 10).max(1);
        self.factor_with_warmup(step, step as f64 / total.max(1) as f64, warmup)
    }

    fn factor_with_warmup(self, step: u64, done: f64, warmup: u64) -> f32 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let warm = ((step + 1) as f64 / warmup as f64).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * done.clamp(0.0, 1.0)).cos());
                (warm * (FINAL_FRACTION + (1.0 - FINAL_FRACTION) * cosine)) as f32
            }
        }
    }
}

/// Steps of the cosine schedule's linear warm-up.
const WARMUP_STEPS: u64 = 100;
/// The cosine schedule's learning rate at the end, as a fraction of the peak.
const FINAL_FRACTION: f64 = 0.05;

/// `--cell`: the recurrent cell (see `unfold::Cell`).
#[derive(Clone, Copy, ValueEnum)]
pub enum CellChoice {
    /// Elman, tanh (PyTorch's nn.RNN).
    Tanh,
    /// Elman, relu.
    Relu,
    /// Long short-term memory (nn.LSTM).
    Lstm,
    /// Gated recurrent unit (nn.GRU).
    Gru,
}

impl From<CellChoice> for Cell {
    fn from(choice: CellChoice) -> Cell {
        match choice {
            CellChoice::Tanh => Cell::Tanh,
            CellChoice::Relu => Cell::Relu,
            CellChoice::Lstm => Cell::Lstm,
            CellChoice::Gru => Cell::Gru,
        }
    }
}

/// `--time-loop`: how the GPU path walks the steps (see `unfold::internals::TimeLoop`).
#[derive(Clone, Copy, ValueEnum)]
pub enum TimeLoopChoice {
    Auto,
    PerStep,
    Persistent,
    TiledSteps,
}

impl From<TimeLoopChoice> for TimeLoop {
    fn from(choice: TimeLoopChoice) -> Self {
        match choice {
            TimeLoopChoice::Auto => TimeLoop::Auto,
            TimeLoopChoice::PerStep => TimeLoop::PerStep,
            TimeLoopChoice::Persistent => TimeLoop::Persistent,
            TimeLoopChoice::TiledSteps => TimeLoop::TiledSteps,
        }
    }
}
