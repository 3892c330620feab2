//! Optimizers with PyTorch's semantics. An [`Optimizer`] is a device-independent
//! description plus its state (step count, moment vectors), which lives on the device of
//! the model it was first used with.

use crate::{Error, Result, RnnParams};

/// Which update rule, with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `p -= lr · g`
    Sgd {
        /// Learning rate.
        lr: f32,
    },
    /// `buf = momentum · buf + g; p -= lr · buf` (`torch.optim.SGD(momentum=..)`,
    /// no dampening, not Nesterov)
    Momentum {
        /// Learning rate.
        lr: f32,
        /// Momentum factor.
        momentum: f32,
    },
    /// `torch.optim.Adam`, or `torch.optim.AdamW` with a decoupled `weight_decay`
    /// (0: none).
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first moment.
        beta1: f32,
        /// Decay of the second moment.
        beta2: f32,
        /// Added to the denominator's square root.
        eps: f32,
        /// Decoupled weight decay: each step first scales the parameters by
        /// `1 - lr · weight_decay`, as `torch.optim.AdamW`.
        weight_decay: f32,
    },
}

/// Moment vectors kept on the CPU.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CpuMoments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

impl CpuMoments {
    /// Checks the moments this rule needs against the model's parameter count.
    pub fn check(&self, n: usize, needs_m: bool, needs_v: bool) -> Result<()> {
        for (name, needed, len) in [
            ("first moment", needs_m, self.m.len()),
            ("second moment", needs_v, self.v.len()),
        ] {
            if needed && len != n {
                return Err(Error::OptimizerMismatch(format!(
                    "the {name} is for {len} parameters, this model has {n}"
                )));
            }
        }
        Ok(())
    }
}

/// An optimizer's state, for checkpoints: the number of updates applied and the moment
/// vectors in the flat order of [`RnnParams::tensors`] (`m`: momentum buffer or Adam's
/// first moment, `v`: Adam's second moment; empty where the rule has none).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// The name and shape of every parameter tensor the moments are for, in their flat
    /// order ([`crate::RnnConfig::param_layout`]); empty when unknown, and then only the
    /// moments' length is checked against the model.
    pub layout: Vec<(String, Vec<usize>)>,
    /// Updates applied (Adam's `t`).
    pub steps: u64,
    /// Momentum buffer or Adam's first moment (empty for plain SGD).
    pub m: Vec<f32>,
    /// Adam's second moment (empty for the other rules).
    pub v: Vec<f32>,
}

impl OptimizerKind {
    /// Whether the rule keeps a first and a second moment.
    pub(crate) fn moments(&self) -> (bool, bool) {
        match self {
            OptimizerKind::Sgd { .. } => (false, false),
            OptimizerKind::Momentum { .. } => (true, false),
            OptimizerKind::Adam { .. } => (true, true),
        }
    }
}

#[derive(Debug)]
pub(crate) enum State {
    /// Not used yet: the first step allocates the moments where the model lives.
    Fresh,
    Cpu(CpuMoments),
    Gpu(crate::gpu::OptimizerBuffers),
}

/// An optimizer: update rule, optional gradient clipping, and state.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    clip: Option<f32>,
    /// Number of updates applied (Adam's `t`).
    pub(crate) steps: u64,
    pub(crate) state: State,
    /// The parameters the state is for (name and shape of each tensor), fixed by the
    /// first model the optimizer updates or by an imported state.
    layout: Option<Vec<(String, Vec<usize>)>>,
}

impl Optimizer {
    fn with(kind: OptimizerKind) -> Self {
        Optimizer {
            kind,
            clip: None,
            steps: 0,
            state: State::Fresh,
            layout: None,
        }
    }

    /// Plain SGD, `torch.optim.SGD(lr=lr)`.
    pub fn sgd(lr: f32) -> Self {
        Self::with(OptimizerKind::Sgd { lr })
    }

    /// SGD with momentum, `torch.optim.SGD(lr=lr, momentum=momentum)`.
    pub fn sgd_momentum(lr: f32, momentum: f32) -> Self {
        Self::with(OptimizerKind::Momentum { lr, momentum })
    }

    /// Betas (0.9, 0.999), eps 1e-8, as `torch.optim.Adam`.
    pub fn adam(lr: f32) -> Self {
        Self::adamw(lr, 0.0)
    }

    /// Adam with decoupled weight decay, as `torch.optim.AdamW(lr, weight_decay=..)`
    /// (betas (0.9, 0.999), eps 1e-8). The decay applies to every parameter, biases
    /// included, as it does there by default.
    pub fn adamw(lr: f32, weight_decay: f32) -> Self {
        Self::with(OptimizerKind::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// Scales the gradients so that their global L2 norm over all parameters is at most
    /// `max_norm` before each update, as `torch.nn.utils.clip_grad_norm_`.
    pub fn clip_grad_norm(mut self, max_norm: f32) -> Self {
        self.clip = Some(max_norm);
        self
    }

    /// The update rule and its hyper-parameters.
    pub fn kind(&self) -> OptimizerKind {
        self.kind
    }

    /// The clipping norm, if the gradients are clipped.
    pub fn clip(&self) -> Option<f32> {
        self.clip
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self.kind {
            OptimizerKind::Sgd { lr }
            | OptimizerKind::Momentum { lr, .. }
            | OptimizerKind::Adam { lr, .. } => lr,
        }
    }

    /// Changes the learning rate from the next update on (for schedules).
    pub fn set_lr(&mut self, new_lr: f32) {
        match &mut self.kind {
            OptimizerKind::Sgd { lr }
            | OptimizerKind::Momentum { lr, .. }
            | OptimizerKind::Adam { lr, .. } => *lr = new_lr,
        }
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The state to save with a checkpoint: `None` before the first update. Reads it back
    /// from the GPU when it lives there.
    pub fn export_state(&self) -> Result<Option<OptimizerState>> {
        let (m, v) = match &self.state {
            State::Fresh => return Ok(None),
            State::Cpu(c) => (c.m.clone(), c.v.clone()),
            State::Gpu(b) => b.read()?,
        };
        Ok(Some(OptimizerState {
            layout: self.layout.clone().unwrap_or_default(),
            steps: self.steps,
            m,
            v,
        }))
    }

    /// Restores a saved state (replacing any); it moves to the model's device at the
    /// next update, which refuses it if its sizes do not fit the model.
    pub fn import_state(&mut self, state: OptimizerState) -> Result<()> {
        if let Some(i) = state.m.iter().chain(&state.v).position(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "optimizer state".into(),
                detail: format!("element {i} of the moments is not finite"),
            });
        }
        if let Some((i, v)) = state.v.iter().enumerate().find(|(_, v)| **v < 0.0) {
            return Err(Error::OptimizerMismatch(format!(
                "element {i} of the second moments is {v}: they are running means of squared gradients, never negative, so no optimizer wrote this state"
            )));
        }
        self.steps = state.steps;
        self.layout = (!state.layout.is_empty()).then_some(state.layout);
        self.state = State::Cpu(CpuMoments {
            m: state.m,
            v: state.v,
        });
        Ok(())
    }

    /// Ties the optimizer to the parameters of `layout` on first use, or checks that they
    /// are the ones it was tied to: a state is never applied to other parameters, even of
    /// the same count. Returns whether it tied itself just now (to be undone with
    /// [`Optimizer::untie`] if the step is refused).
    pub(crate) fn tie(&mut self, layout: &[(String, Vec<usize>)]) -> Result<bool> {
        match &self.layout {
            None => {
                self.layout = Some(layout.to_vec());
                Ok(true)
            }
            Some(own) if own.as_slice() == layout => Ok(false),
            Some(own) => {
                let differs = own
                    .iter()
                    .zip(layout)
                    .find(|(a, b)| a != b)
                    .map(|((n, s), (m, t))| format!("{n} {s:?} where the model has {m} {t:?}"))
                    .unwrap_or_else(|| {
                        format!("{} tensors where the model has {}", own.len(), layout.len())
                    });
                let count = |l: &[(String, Vec<usize>)]| -> usize {
                    l.iter()
                        .map(|(_, shape)| shape.iter().product::<usize>())
                        .sum()
                };
                Err(Error::OptimizerMismatch(format!(
                    "this optimizer's state is for other parameters ({} of them, the model has {}): {differs}; use a fresh optimizer for this model",
                    count(own),
                    count(layout)
                )))
            }
        }
    }

    /// Forgets a tie made by a step that was then refused.
    pub(crate) fn untie(&mut self) {
        self.layout = None;
    }

    /// Checks the hyper-parameters (and that the step count can count one more update): a
    /// bad value is an error before anything changes.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, expected: &'static str, v: f32| {
            Err(Error::InvalidConfig {
                what,
                expected,
                got: v.to_string(),
            })
        };
        let lr = self.lr();
        if !(lr.is_finite() && lr >= 0.0) {
            return bad("learning rate", "finite and >= 0", lr);
        }
        match self.kind {
            OptimizerKind::Momentum { momentum, .. } if !(0.0..=1.0).contains(&momentum) => {
                return bad("momentum", "in [0, 1]", momentum)
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                ..
            } => {
                if !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return bad("AdamW weight_decay", "finite and >= 0", weight_decay);
                }
                if !(0.0..1.0).contains(&beta1) {
                    return bad("Adam beta1", "in [0, 1)", beta1);
                }
                if !(0.0..1.0).contains(&beta2) {
                    return bad("Adam beta2", "in [0, 1)", beta2);
                }
                if !(eps.is_finite() && eps > 0.0) {
                    return bad("Adam eps", "finite and > 0", eps);
                }
            }
            _ => {}
        }
        if let Some(c) = self.clip {
            if !(c.is_finite() && c > 0.0) {
                return bad("clip_grad_norm max_norm", "finite and > 0", c);
            }
        }
        if self.steps == u64::MAX {
            return Err(Error::InvalidConfig {
                what: "optimizer step count",
                expected: "below 2^64 - 1, so that the next update can be counted",
                got: self.steps.to_string(),
            });
        }
        Ok(())
    }

    /// One update on the CPU: clips `grads` in place (when asked) and updates `params`.
    /// The update is refused, changing neither the parameters nor the optimizer (step
    /// count, moments, a fresh state staying fresh), when any new parameter or moment
    /// would not be finite: a first pass computes every new value and only checks it, a
    /// second pass (the same arithmetic) commits.
    pub(crate) fn apply_cpu(
        &mut self,
        params: &mut RnnParams,
        grads: &mut RnnParams,
    ) -> Result<()> {
        self.validate()?;
        let n = params.len();
        let was_fresh = matches!(self.state, State::Fresh);
        if was_fresh {
            let v_len = if matches!(self.kind, OptimizerKind::Adam { .. }) {
                n
            } else {
                0
            };
            self.state = State::Cpu(CpuMoments {
                m: vec![0.0; n],
                v: vec![0.0; v_len],
            });
        }
        let State::Cpu(moments) = &mut self.state else {
            return Err(Error::OptimizerMismatch(
                "this optimizer's state lives on the GPU; use a fresh optimizer for a CPU model"
                    .into(),
            ));
        };
        let (needs_m, needs_v) = self.kind.moments();
        moments.check(n, needs_m, needs_v)?;
        let mut grads = grads.tensors_mut();
        if let Some(max_norm) = self.clip {
            let sum_sq: f64 = grads
                .iter()
                .flat_map(|t| t.iter())
                .map(|&g| (g as f64) * (g as f64))
                .sum();
            let scale = clip_scale(sum_sq.sqrt() as f32, max_norm);
            grads
                .iter_mut()
                .flat_map(|t| t.iter_mut())
                .for_each(|g| *g *= scale);
        }
        let step = self.steps + 1;
        let rule = Rule::new(self.kind, step);
        let mut params = params.tensors_mut();
        let (params_ok, moments_ok) = rule.check(&params, &grads, moments);
        if !(params_ok && moments_ok) {
            if was_fresh {
                self.state = State::Fresh;
            }
            return Err(update_overflow(!params_ok, !moments_ok));
        }
        rule.commit(&mut params, &grads, moments);
        self.steps = step;
        Ok(())
    }
}

/// The refusal of an update whose loss and gradients are finite but whose result is not:
/// `params` and `moments` say which would have become non-finite.
pub(crate) fn update_overflow(params: bool, moments: bool) -> Error {
    let what = match (params, moments) {
        (true, false) => "the parameters",
        (false, true) => "the optimizer's moments",
        _ => "the parameters and the optimizer's moments",
    };
    Error::NonFinite {
        what: "training step".into(),
        detail: format!(
            "the loss and gradients are finite, but the update would make {what} non-finite (it overflows f32); the parameters were not updated (lower the learning rate or clip the gradients)"
        ),
    }
}

/// One step's update rule with its per-step constants, element by element. `check` and
/// `commit` share the same arithmetic ([`Rule::sgd`], ...), so what was checked is
/// exactly what is committed.
#[derive(Clone, Copy)]
enum Rule {
    Sgd {
        /// Learning rate.
        lr: f32,
    },
    Momentum {
        /// Learning rate.
        lr: f32,
        /// Momentum factor.
        momentum: f32,
    },
    Adam(AdamRule),
}

/// Adam's hyper-parameters and the step's coefficients.
#[derive(Clone, Copy)]
struct AdamRule {
    beta1: f32,
    beta2: f32,
    eps: f32,
    /// `1 - lr · weight_decay`
    decay: f32,
    c: AdamCoefficients,
}

impl AdamRule {
    /// New parameter, first and second moment.
    #[inline(always)]
    fn update(self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let m = self.beta1 * m + (1.0 - self.beta1) * g;
        let v = self.beta2 * v + (1.0 - self.beta2) * g * g;
        let denom = v.sqrt() / self.c.bias_correction2_sqrt + self.eps;
        (p * self.decay - self.c.step_size * m / denom, m, v)
    }
}

impl Rule {
    fn new(kind: OptimizerKind, step: u64) -> Self {
        match kind {
            OptimizerKind::Sgd { lr } => Rule::Sgd { lr },
            OptimizerKind::Momentum { lr, momentum } => Rule::Momentum { lr, momentum },
            OptimizerKind::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => Rule::Adam(AdamRule {
                beta1,
                beta2,
                eps,
                decay: 1.0 - lr * weight_decay,
                c: AdamCoefficients::new(lr, beta1, beta2, step),
            }),
        }
    }

    /// New parameter.
    #[inline(always)]
    fn sgd(lr: f32, p: f32, g: f32) -> f32 {
        p - lr * g
    }

    /// New parameter and momentum buffer.
    #[inline(always)]
    fn momentum(lr: f32, momentum: f32, p: f32, g: f32, b: f32) -> (f32, f32) {
        let b = momentum * b + g;
        (p - lr * b, b)
    }

    /// Whether every new parameter, and every new moment, would be finite; writes nothing.
    fn check(
        self,
        params: &[&mut [f32]],
        grads: &[&mut [f32]],
        moments: &CpuMoments,
    ) -> (bool, bool) {
        let (mut params_ok, mut moments_ok) = (true, true);
        let mut at = 0;
        for (p, g) in params.iter().zip(grads) {
            let range = at..at + p.len();
            at += p.len();
            match self {
                Rule::Sgd { lr } => {
                    params_ok &= p
                        .iter()
                        .zip(g.iter())
                        .fold(true, |ok, (&p, &g)| ok & Self::sgd(lr, p, g).is_finite());
                }
                Rule::Momentum { lr, momentum } => {
                    for ((&p, &g), &b) in p.iter().zip(g.iter()).zip(&moments.m[range]) {
                        let (p, b) = Self::momentum(lr, momentum, p, g, b);
                        params_ok &= p.is_finite();
                        moments_ok &= b.is_finite();
                    }
                }
                Rule::Adam(adam) => {
                    let (m, v) = (&moments.m[range.clone()], &moments.v[range]);
                    for (((&p, &g), &m), &v) in p.iter().zip(g.iter()).zip(m).zip(v) {
                        let (p, m, v) = adam.update(p, g, m, v);
                        params_ok &= p.is_finite();
                        moments_ok &= m.is_finite() & v.is_finite();
                    }
                }
            }
        }
        (params_ok, moments_ok)
    }

    /// Writes every new parameter and moment.
    fn commit(self, params: &mut [&mut [f32]], grads: &[&mut [f32]], moments: &mut CpuMoments) {
        let mut at = 0;
        for (p, g) in params.iter_mut().zip(grads) {
            let range = at..at + p.len();
            at += p.len();
            match self {
                Rule::Sgd { lr } => p
                    .iter_mut()
                    .zip(g.iter())
                    .for_each(|(p, &g)| *p = Self::sgd(lr, *p, g)),
                Rule::Momentum { lr, momentum } => {
                    for ((p, &g), b) in p.iter_mut().zip(g.iter()).zip(&mut moments.m[range]) {
                        (*p, *b) = Self::momentum(lr, momentum, *p, g, *b);
                    }
                }
                Rule::Adam(adam) => {
                    let (m, v) = (&mut moments.m[range.clone()], &mut moments.v[range]);
                    for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m).zip(v) {
                        (*p, *m, *v) = adam.update(*p, g, *m, *v);
                    }
                }
            }
        }
    }
}

/// The per-step scalars of Adam, computed as PyTorch's single-tensor Adam does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamCoefficients {
    pub step_size: f32,
    pub bias_correction2_sqrt: f32,
}

impl AdamCoefficients {
    pub fn new(lr: f32, beta1: f32, beta2: f32, step: u64) -> Self {
        // beta^step is 0 in f64 long before 2^31 steps (beta < 1), so capping the exponent
        // changes nothing, where `step as i32` wrapped to a negative power
        let power = step.min(i32::MAX as u64) as i32;
        let bias_correction1 = 1.0 - (beta1 as f64).powi(power);
        let bias_correction2 = 1.0 - (beta2 as f64).powi(power);
        AdamCoefficients {
            step_size: (lr as f64 / bias_correction1) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
        }
    }
}

/// `clip_grad_norm_`'s factor: `min(1, max_norm / (norm + 1e-6))`.
pub(crate) fn clip_scale(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RnnConfig;

    /// Bit patterns, so that a refused update is checked to change nothing at all.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn problem(grad: f32) -> (RnnParams, RnnParams) {
        let config = RnnConfig::new(2, 3, 2);
        let params = RnnParams::init(&config, 7);
        let mut grads = RnnParams::zeros(&config);
        grads.assign_flat(&vec![grad; params.len()]).unwrap();
        (params, grads)
    }

    /// `apply_cpu` refuses with a message naming `what`, leaving everything as it was.
    fn assert_refused(opt: &mut Optimizer, grad: f32, what: &str) {
        let (mut params, mut grads) = problem(grad);
        let (p0, s0) = (bits(&params.to_flat()), opt.export_state().unwrap());
        let steps = opt.steps();
        let e = opt
            .apply_cpu(&mut params, &mut grads)
            .expect_err("an overflowing update was applied");
        let msg = e.to_string();
        assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
        // "would make" names exactly what overflows: the parameters, the moments, or both
        for w in [&format!("would make {what}"), "non-finite", "not updated"] {
            assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
        }
        assert_eq!(bits(&params.to_flat()), p0);
        let s1 = opt.export_state().unwrap();
        assert_eq!(s0.is_some(), s1.is_some(), "fresh state changed");
        if let (Some(s0), Some(s1)) = (s0, s1) {
            assert_eq!((bits(&s0.m), bits(&s0.v)), (bits(&s1.m), bits(&s1.v)));
        }
        assert_eq!(opt.steps(), steps);
    }

    #[test]
    fn adam_second_moment_overflow_is_refused() {
        // g = 1e25: (1 - beta2) · g · g overflows, the new parameter would not (m / inf)
        let mut adam = Optimizer::adam(1e-3);
        assert_refused(&mut adam, 1e25, "the optimizer's moments non-finite");
        // and with moments that are not zeros
        let (mut params, mut grads) = problem(0.5);
        adam.apply_cpu(&mut params, &mut grads).unwrap();
        assert_refused(&mut adam, 1e25, "the optimizer's moments non-finite");
    }

    #[test]
    fn momentum_buffer_overflow_is_refused() {
        let (params, _) = problem(0.0);
        let n = params.len();
        let mut opt = Optimizer::sgd_momentum(1e-3, 1.0);
        opt.import_state(OptimizerState {
            layout: Vec::new(),
            steps: 4,
            m: vec![f32::MAX; n],
            v: vec![],
        })
        .unwrap();
        // MAX + 1e32 rounds to infinity, and so does the parameter
        assert_refused(
            &mut opt,
            1e32,
            "the parameters and the optimizer's moments non-finite",
        );
    }

    #[test]
    fn parameter_overflow_is_refused_for_every_rule() {
        for mut opt in [
            Optimizer::sgd(f32::MAX),
            Optimizer::sgd_momentum(f32::MAX, 0.9),
            Optimizer::adam(f32::MAX),
        ] {
            assert_refused(&mut opt, 10.0, "the parameters non-finite");
        }
    }

    #[test]
    fn adam_after_two_billion_updates_still_updates() {
        for steps in [(1u64 << 31) - 1, 1 << 31, 1 << 32, u64::MAX - 1] {
            let c = AdamCoefficients::new(0.1, 0.9, 0.999, steps + 1);
            assert_eq!(
                (c.step_size, c.bias_correction2_sqrt),
                (0.1, 1.0),
                "{steps}"
            );
            let mut adam = Optimizer::adam(0.1);
            let n = problem(1.0).0.len();
            adam.import_state(OptimizerState {
                layout: Vec::new(),
                steps,
                m: vec![0.0; n],
                v: vec![0.0; n],
            })
            .unwrap();
            let (mut params, mut grads) = problem(1.0);
            adam.apply_cpu(&mut params, &mut grads).unwrap();
            assert_eq!(adam.steps(), steps + 1);
        }
    }

    #[test]
    fn no_update_follows_the_last_countable_one() {
        // the step count cannot count another update: refused, not an overflow
        let (mut params, mut grads) = problem(1.0);
        let mut adam = Optimizer::adam(0.1);
        adam.import_state(OptimizerState {
            layout: Vec::new(),
            steps: u64::MAX,
            m: vec![0.0; params.len()],
            v: vec![0.0; params.len()],
        })
        .unwrap();
        let e = adam.apply_cpu(&mut params, &mut grads).unwrap_err();
        assert!(e.to_string().contains("step count"), "{e}");
    }

    #[test]
    fn validate_takes_the_edges_of_each_range_and_refuses_past_them() {
        // betas and eps are fixed by the public constructors; the rule checks them anyway
        let adam = |beta1, beta2, eps, weight_decay| {
            Optimizer::with(OptimizerKind::Adam {
                lr: 1e-3,
                beta1,
                beta2,
                eps,
                weight_decay,
            })
        };
        for opt in [
            Optimizer::sgd(0.0),
            Optimizer::sgd_momentum(0.1, 0.0),
            Optimizer::sgd_momentum(0.1, 1.0),
            adam(0.0, 0.0, 1e-30, 0.0),
            adam(0.99, 0.9999, 1.0, 1e30),
            Optimizer::sgd(0.1).clip_grad_norm(1e-30),
        ] {
            assert!(opt.validate().is_ok(), "{opt:?} refused");
        }
        for (opt, what) in [
            (Optimizer::sgd(f32::INFINITY), "learning rate"),
            (Optimizer::sgd(-0.0001), "learning rate"),
            (Optimizer::sgd_momentum(0.1, 1.0001), "momentum"),
            (Optimizer::sgd_momentum(0.1, f32::NAN), "momentum"),
            (adam(1.0, 0.999, 1e-8, 0.0), "beta1"),
            (adam(-0.1, 0.999, 1e-8, 0.0), "beta1"),
            (adam(0.9, 1.0, 1e-8, 0.0), "beta2"),
            (adam(0.9, -0.1, 1e-8, 0.0), "beta2"),
            (adam(0.9, 0.999, 0.0, 0.0), "eps"),
            (adam(0.9, 0.999, -1e-8, 0.0), "eps"),
            (adam(0.9, 0.999, f32::INFINITY, 0.0), "eps"),
            (adam(0.9, 0.999, 1e-8, -0.01), "weight_decay"),
            (adam(0.9, 0.999, 1e-8, f32::INFINITY), "weight_decay"),
            (
                Optimizer::sgd(0.1).clip_grad_norm(f32::INFINITY),
                "max_norm",
            ),
        ] {
            let e = opt.validate().expect_err(&format!("{opt:?} accepted"));
            assert!(e.to_string().contains(what), "{opt:?}: {e}");
        }
    }

    #[test]
    fn an_overflow_in_any_element_of_any_tensor_is_refused() {
        // momentum 1 and a buffer at f32::MAX in one element only, a gradient of 1e32
        // there: that element's buffer and parameter overflow, wherever it is
        let n = problem(0.0).0.len();
        for i in [0, n / 2, n - 1] {
            let mut m = vec![0.0; n];
            m[i] = f32::MAX;
            let mut opt = Optimizer::sgd_momentum(1e-3, 1.0);
            opt.import_state(OptimizerState {
                layout: Vec::new(),
                steps: 1,
                m,
                v: vec![],
            })
            .unwrap();
            let (mut params, mut grads) = problem(0.0);
            let mut g = vec![0.0; n];
            g[i] = 1e32;
            grads.assign_flat(&g).unwrap();
            let p0 = bits(&params.to_flat());
            let e = opt
                .apply_cpu(&mut params, &mut grads)
                .expect_err(&format!("element {i}: an overflowing update was applied"));
            assert!(
                e.to_string()
                    .contains("would make the parameters and the optimizer's moments"),
                "element {i}: {e}"
            );
            assert_eq!(bits(&params.to_flat()), p0, "element {i}");
        }
    }

    #[test]
    fn moments_of_another_length_are_refused() {
        // each moment the rule keeps is checked against the parameter count
        let n = problem(0.0).0.len();
        for (mut opt, m, v, which) in [
            (Optimizer::adam(0.1), n, n - 1, "second moment"),
            (Optimizer::adam(0.1), n + 1, n, "first moment"),
            (Optimizer::sgd_momentum(0.1, 0.9), n - 1, 0, "first moment"),
        ] {
            opt.import_state(OptimizerState {
                layout: Vec::new(),
                steps: 1,
                m: vec![0.0; m],
                v: vec![0.0; v],
            })
            .unwrap();
            let (mut params, mut grads) = problem(1.0);
            let e = opt
                .apply_cpu(&mut params, &mut grads)
                .expect_err("moments of another length were used");
            assert!(matches!(e, Error::OptimizerMismatch(_)), "{e:?}");
            assert!(e.to_string().contains(which), "{which}: {e}");
        }
        // plain SGD keeps none, and any it was given are not looked at
        let mut sgd = Optimizer::sgd(0.1);
        sgd.import_state(OptimizerState {
            layout: Vec::new(),
            steps: 1,
            m: vec![],
            v: vec![],
        })
        .unwrap();
        let (mut params, mut grads) = problem(1.0);
        sgd.apply_cpu(&mut params, &mut grads).unwrap();
    }

    #[test]
    fn adam_adds_eps_to_the_denominator() {
        // the first step with g = 3e-8 everywhere (PyTorch's formula): m = 0.1 g,
        // v = 0.001 g², and each parameter moves by
        // lr / 0.1 · m / (sqrt(v / 0.001) + eps) = lr · g / (|g| + 1e-8) = 0.75 lr
        let (mut params, mut grads) = problem(3e-8);
        let p0 = params.to_flat();
        let mut adam = Optimizer::adam(0.1);
        adam.apply_cpu(&mut params, &mut grads).unwrap();
        for (a, b) in params.to_flat().iter().zip(&p0) {
            assert!((b - a - 0.075).abs() < 1e-5, "{b} -> {a}");
        }
    }

    #[test]
    fn clipping_divides_by_the_norm_plus_pytorchs_epsilon() {
        // clip_grad_norm_: max_norm / (norm + 1e-6), at most 1; the epsilon shows on tiny
        // norms
        let tiny = clip_scale(2e-6, 1e-6);
        assert!((tiny - 1.0 / 3.0).abs() < 1e-4, "{tiny}");
        let big = clip_scale(4.0, 1.0);
        assert!((big - 0.25).abs() < 1e-6, "{big}");
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert_eq!(Optimizer::sgd(0.1).clip_grad_norm(0.5).clip(), Some(0.5));
        assert_eq!(Optimizer::adam(0.1).clip(), None);
    }

    #[test]
    fn a_finite_update_is_applied() {
        for mut opt in [
            Optimizer::sgd(0.1),
            Optimizer::sgd_momentum(0.1, 0.9),
            Optimizer::adam(0.1),
        ] {
            let (mut params, mut grads) = problem(1.0);
            let p0 = params.to_flat();
            opt.apply_cpu(&mut params, &mut grads).unwrap();
            assert_eq!(opt.steps(), 1);
            // every rule moves each parameter by 0.1 against a gradient of 1 on its first
            // step (Adam: lr · sign(g))
            for (a, b) in params.to_flat().iter().zip(&p0) {
                assert!((b - a - 0.1).abs() < 1e-4, "{b} -> {a}");
            }
        }
    }
}
