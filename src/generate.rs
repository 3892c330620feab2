//! Generating text with a trained token model (input size = output size = vocabulary
//! size, per-step head): the prime is run through the model in one forward pass, then
//! the model steps one token at a time from its previous final state, each token drawn
//! on the host from `softmax(logits / temperature)`.
//!
//! ```
//! use unfold::generate::sample_text;
//! use unfold::text::Vocabulary;
//! use unfold::{Device, Rnn, RnnConfig, RnnParams};
//!
//! let vocab = Vocabulary::from_text("hello world")?;
//! let config = RnnConfig::new(vocab.len(), 16, vocab.len());
//! let mut rnn = Rnn::new(config.clone(), RnnParams::init(&config, 0), &Device::cpu())?;
//! let text = sample_text(&mut rnn, &vocab, "he", 10, 0.8, 7)?; // untrained: noise
//! assert!(text.starts_with("he"));
//! assert_eq!(text.chars().count(), 12);
//! # Ok::<(), unfold::Error>(())
//! ```

use crate::rng::SplitMix64;
use crate::text::Vocabulary;
use crate::{Error, Head, Result, Rnn, RnnState, SequenceBatch};

/// A token drawn from `softmax(logits / temperature)`; a temperature of 0 takes the most
/// likely token (the first of equals). Computed in f64, shifted by the largest logit.
/// A logit of −∞ is never drawn. A NaN or +∞ logit, no finite one, or a temperature that
/// is negative or not finite is [`Error::InvalidConfig`].
pub fn sample_logits(logits: &[f32], temperature: f32, rng: &mut SplitMix64) -> Result<u32> {
    check_temperature(temperature)?;
    let bad = logits.iter().find(|l| l.is_nan() || **l == f32::INFINITY);
    if bad.is_some() || !logits.iter().any(|l| l.is_finite()) {
        return Err(Error::InvalidConfig {
            what: "logits",
            expected: "numbers or -inf, at least one of them finite",
            got: match bad {
                Some(b) => b.to_string(),
                None => format!("{logits:?}"),
            },
        });
    }
    Ok(draw(logits, temperature, rng))
}

/// [`sample_logits`] on checked logits and temperature.
fn draw(logits: &[f32], temperature: f32, rng: &mut SplitMix64) -> u32 {
    let argmax = logits
        .iter()
        .enumerate()
        .fold(0, |best, (i, &l)| if l > logits[best] { i } else { best });
    if temperature == 0.0 {
        return argmax as u32;
    }
    let max = logits[argmax] as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    // 53 random bits, uniform in [0, total)
    let mut u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    argmax as u32 // rounding at the very end of the range
}

/// Checks that `rnn` maps tokens to next-token logits and returns its vocabulary size.
fn token_model_size(rnn: &Rnn) -> Result<usize> {
    let c = rnn.config();
    if c.input_size != c.output_size || c.head != Head::PerStep {
        return Err(Error::InvalidConfig {
            what: "model for generation",
            expected: "a per-step head with input_size == output_size (a token model)",
            got: format!(
                "input_size {}, output_size {}, {:?} head",
                c.input_size, c.output_size, c.head
            ),
        });
    }
    Ok(c.input_size)
}

fn check_temperature(temperature: f32) -> Result<()> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(Error::InvalidConfig {
            what: "temperature",
            expected: "finite and >= 0 (0: always the most likely token)",
            got: temperature.to_string(),
        });
    }
    Ok(())
}

/// `count` tokens drawn after `prime` (at least one token). The prime is one forward pass;
/// each new token is a one-token forward pass from the previous final state.
pub fn sample_tokens(
    rnn: &mut Rnn,
    prime: &[u32],
    count: usize,
    temperature: f32,
    rng: &mut SplitMix64,
) -> Result<Vec<u32>> {
    let vocab_size = token_model_size(rnn)?;
    check_temperature(temperature)?;
    if prime.is_empty() {
        return Err(Error::InvalidConfig {
            what: "prime",
            expected: "at least one token",
            got: "none".into(),
        });
    }
    let batch = SequenceBatch::tokens_only(vec![prime.to_vec()], vocab_size)?;
    // grown as tokens come: `count` is a bound, not a size to reserve up front (a count
    // near usize::MAX overflowed the capacity, 2^40 asked for 4 TB at once)
    let mut out = Vec::with_capacity(count.min(1 << 16));
    if count == 0 {
        return Ok(out);
    }
    let mut forward = rnn.forward_from(&batch, None)?;
    let mut last = prime.len() - 1;
    loop {
        let logits: Vec<f32> = (0..vocab_size)
            .map(|k| forward.outputs[[0, last, k]])
            .collect();
        let token = sample_logits(&logits, temperature, rng)?;
        out.push(token);
        if out.len() == count {
            return Ok(out);
        }
        let step = SequenceBatch::tokens_only(vec![vec![token]], vocab_size)?;
        let state = RnnState {
            h: forward.final_hidden,
            c: forward.final_cell,
        };
        forward = rnn.forward_from(&step, Some(&state))?;
        last = 0;
    }
}

/// `prime` followed by `len` characters drawn from the model (see [`sample_tokens`]),
/// with a generator seeded by `seed`. Every character of the prime must be in the
/// vocabulary, and the vocabulary must be the model's.
pub fn sample_text(
    rnn: &mut Rnn,
    vocabulary: &Vocabulary,
    prime: &str,
    len: usize,
    temperature: f32,
    seed: u64,
) -> Result<String> {
    let vocab_size = token_model_size(rnn)?;
    if vocabulary.len() != vocab_size {
        return Err(Error::shape(
            "vocabulary size (the model's input_size)",
            vocab_size,
            vocabulary.len(),
        ));
    }
    if let Some(c) = prime.chars().find(|&c| vocabulary.id(c).is_none()) {
        return Err(Error::InvalidConfig {
            what: "prime",
            expected: "made of characters of the model's vocabulary",
            got: format!("{prime:?}, whose {c:?} is not among them"),
        });
    }
    let ids = vocabulary.encode(prime)?;
    let mut rng = SplitMix64::new(seed);
    let sampled = sample_tokens(rnn, &ids, len, temperature, &mut rng)?;
    Ok(format!("{prime}{}", vocabulary.decode(&sampled)))
}
