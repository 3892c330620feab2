//! Text for character-level language models: reading a text file with clear errors (a
//! missing, empty or binary file), a character [`Vocabulary`], a [`Corpus`] split into
//! training and held-out text, and [`TokenStreams`], the chunks of truncated
//! back-propagation through time.
//!
//! Truncated BPTT as in min-char-rnn: the text is cut into `B` contiguous segments, one
//! per parallel *stream*; chunk `c` holds steps `c·T .. (c+1)·T` of every stream, and the
//! state a stream ends a chunk in is where it starts the next one. Each target is the
//! next character.
//!
//! ```
//! use unfold::text::{Corpus, TokenStreams};
//!
//! let corpus = Corpus::new("abracadabra, abracadabra", 0.25)?;
//! assert_eq!(corpus.vocabulary().len(), 7); // ' ' , a b c d r
//! let streams = TokenStreams::new(corpus.train().len(), 2, 4)?;
//! let (inputs, targets) = streams.chunk(corpus.train(), 0);
//! assert_eq!(inputs.len(), 2); // one sequence per stream
//! assert_eq!(&inputs[0][1..], &targets[0][..3]); // the targets are the next characters
//! # Ok::<(), unfold::Error>(())
//! ```

use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// The bundled corpus: Jane Austen's *Persuasion* (1818), public domain; see
/// `data/corpus/README.md` for its source.
pub const BUNDLED_TEXT: &str = include_str!("../data/corpus/persuasion.txt");

/// How the bundled corpus is named in messages and checkpoints.
pub const BUNDLED_NAME: &str = "Persuasion by Jane Austen (bundled)";

/// Reads a UTF-8 text file for training. A missing or unreadable file, an empty one, and
/// one that is not UTF-8 text (invalid UTF-8, or NUL bytes, as in binary files) are
/// errors that name the file and what is wrong with it.
pub fn read_text(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    if path.is_dir() {
        return Err(Error::InvalidData(format!(
            "{} is a directory, not a text file",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "reading text file",
        path: path.to_path_buf(),
        source,
    })?;
    text_from_bytes(bytes, &path.display().to_string())
}

/// [`read_text`]'s checks on bytes already read; `name` is used in the messages.
pub fn text_from_bytes(bytes: Vec<u8>, name: &str) -> Result<String> {
    if bytes.is_empty() {
        return Err(Error::InvalidData(format!(
            "{name} is empty: a language model needs text to learn from"
        )));
    }
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(Error::InvalidData(format!(
            "{name} is not a text file: it holds a NUL byte at offset {at} (a binary file?)"
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let byte = e.as_bytes()[at];
        Error::InvalidData(format!(
            "{name} is not UTF-8 text: byte 0x{byte:02x} at offset {at} is not valid UTF-8 (a binary file, or another encoding: convert it with iconv)"
        ))
    })
}

/// Line and column (1-based) of a character offset, for messages.
fn line_and_column(text: &str, char_offset: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    for c in text.chars().take(char_offset) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// The characters of a text, each with a token id: ids follow the characters' code
/// points, so the same text always gives the same vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    chars: Vec<char>,
    ids: HashMap<char, u32>,
}

impl Vocabulary {
    /// Every distinct character of `text`, sorted. An empty text is an error.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Self::from_chars(chars)
    }

    /// A vocabulary whose token `i` is `chars[i]`: at least one character, no repeats.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            return Err(Error::InvalidData(
                "a vocabulary needs at least one character".into(),
            ));
        }
        if chars.len() > u32::MAX as usize {
            return Err(Error::InvalidData("too many characters".into()));
        }
        let mut ids = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if ids.insert(c, i as u32).is_some() {
                return Err(Error::InvalidData(format!(
                    "the vocabulary lists the character {c:?} twice"
                )));
            }
        }
        Ok(Vocabulary { chars, ids })
    }

    /// Number of tokens (distinct characters): the model's input and output size.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always false: a vocabulary has at least one character.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters, in token order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of a character, if it is in the vocabulary.
    pub fn id(&self, c: char) -> Option<u32> {
        self.ids.get(&c).copied()
    }

    /// The character of an id, if it is in range.
    pub fn char(&self, id: u32) -> Option<char> {
        self.chars.get(id as usize).copied()
    }

    /// The token ids of `text`; a character outside the vocabulary is an error that says
    /// which, and where (line and column).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.id(c).ok_or_else(|| {
                    let (line, column) = line_and_column(text, i);
                    Error::InvalidData(format!(
                        "the character {c:?} (line {line}, column {column}) is not in the vocabulary of {} characters",
                        self.len()
                    ))
                })
            })
            .collect()
    }

    /// The text of `ids`; an id outside the vocabulary becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&id| self.char(id).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect()
    }
}

/// A text as tokens, split into a training part and a held-out part (the end of the
/// text), with the vocabulary of the whole text (or one given).
#[derive(Clone, Debug, PartialEq)]
pub struct Corpus {
    vocabulary: Vocabulary,
    train: Vec<u32>,
    held_out: Vec<u32>,
}

impl Corpus {
    /// The vocabulary of all of `text`; the last `held_out_fraction` of it (in [0, 0.5])
    /// held out.
    pub fn new(text: &str, held_out_fraction: f64) -> Result<Self> {
        Self::with_vocabulary(text, Vocabulary::from_text(text)?, held_out_fraction)
    }

    /// As [`Corpus::new`] with a given vocabulary (a checkpoint's): every character of
    /// `text` must be in it.
    pub fn with_vocabulary(
        text: &str,
        vocabulary: Vocabulary,
        held_out_fraction: f64,
    ) -> Result<Self> {
        if !(0.0..=0.5).contains(&held_out_fraction) {
            return Err(Error::InvalidConfig {
                what: "held-out fraction",
                expected: "in [0, 0.5]",
                got: held_out_fraction.to_string(),
            });
        }
        let mut train = vocabulary.encode(text)?;
        let n = train.len();
        // a held-out part needs an input and a target
        let held = match (n as f64 * held_out_fraction).round() as usize {
            h if held_out_fraction > 0.0 && h < 2 => 2,
            h => h,
        };
        if n < held + 2 {
            return Err(Error::InvalidData(format!(
                "the text has {n} characters: too short to train on (at least {} needed)",
                held + 2
            )));
        }
        let held_out = train.split_off(n - held);
        Ok(Corpus {
            vocabulary,
            train,
            held_out,
        })
    }

    /// The characters and their ids.
    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocabulary
    }

    /// The training tokens (the start of the text).
    pub fn train(&self) -> &[u32] {
        &self.train
    }

    /// The held-out tokens (the end of the text); empty with a held-out fraction of 0.
    pub fn held_out(&self) -> &[u32] {
        &self.held_out
    }
}

/// Chunks of `streams` parallel streams over a token sequence, for truncated BPTT (see
/// the module docs). Stream `i` reads the segment `i·S .. (i+1)·S` with
/// `S = num_tokens / streams`; the last chunk of a pass may be shorter than `seq_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenStreams {
    streams: usize,
    seq_len: usize,
    segment: usize,
}

impl TokenStreams {
    /// Each stream needs at least two tokens (an input and its target).
    pub fn new(num_tokens: usize, streams: usize, seq_len: usize) -> Result<Self> {
        if streams == 0 {
            return Err(Error::InvalidConfig {
                what: "batch (number of streams)",
                expected: "at least 1",
                got: "0".into(),
            });
        }
        if seq_len == 0 {
            return Err(Error::InvalidConfig {
                what: "sequence length",
                expected: "at least 1",
                got: "0".into(),
            });
        }
        let segment = num_tokens / streams;
        if segment < 2 {
            return Err(Error::InvalidData(format!(
                "{num_tokens} characters are too few for {streams} parallel streams: each needs at least 2 (use a smaller --batch or a longer text)"
            )));
        }
        Ok(TokenStreams {
            streams,
            seq_len,
            segment,
        })
    }

    /// `streams` that fit `num_tokens` with chunks of `seq_len`: at most `max_streams`,
    /// at least one, each at least a chunk long when the text allows. `None` when
    /// `num_tokens < 2`.
    pub fn fitting(num_tokens: usize, max_streams: usize, seq_len: usize) -> Option<Self> {
        let streams = (num_tokens / seq_len.saturating_add(1)).clamp(1, max_streams.max(1));
        Self::new(num_tokens, streams, seq_len).ok()
    }

    /// Number of parallel streams.
    pub fn streams(&self) -> usize {
        self.streams
    }

    /// Tokens per chunk of a stream.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Chunks in one pass over the text.
    pub fn chunks_per_pass(&self) -> usize {
        (self.segment - 1).div_ceil(self.seq_len)
    }

    /// Tokens (positions with a target) in one pass.
    pub fn tokens_per_pass(&self) -> usize {
        (self.segment - 1) * self.streams
    }

    /// Inputs and targets of chunk `index` (taken modulo the chunks per pass): one
    /// sequence per stream, all of the same length.
    pub fn chunk(&self, tokens: &[u32], index: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        assert!(
            tokens.len() >= self.segment * self.streams,
            "TokenStreams::chunk: {} tokens, the streams were made for {}",
            tokens.len(),
            self.segment * self.streams
        );
        let index = index % self.chunks_per_pass();
        let start = index * self.seq_len;
        let end = (start + self.seq_len).min(self.segment - 1);
        (0..self.streams)
            .map(|i| {
                let s = &tokens[i * self.segment..(i + 1) * self.segment];
                (s[start..end].to_vec(), s[start + 1..end + 1].to_vec())
            })
            .unzip()
    }
}

/// FNV-1a, 64 bits: a fingerprint of a text or a file, to tell whether two are the same.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
