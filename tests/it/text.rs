//! `unfold::text` (reading text, vocabulary, corpus split, truncated-BPTT streams) and
//! `unfold::generate` (sampling).

use std::path::PathBuf;
use unfold::generate::{sample_logits, sample_text, sample_tokens};
use unfold::rng::SplitMix64;
use unfold::text::{
    fingerprint, read_text, text_from_bytes, Corpus, TokenStreams, Vocabulary, BUNDLED_TEXT,
};
use unfold::{Device, Error, Head, Rnn, RnnConfig, RnnParams, SequenceBatch, Targets};

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("text_{}_{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("write a scratch file");
    path
}

fn message(e: Error) -> String {
    e.to_string()
}

#[test]
fn reading_text_files_says_what_is_wrong() {
    let good = scratch("good.txt", "Anne, übrigens.\n".as_bytes());
    assert_eq!(read_text(&good).unwrap(), "Anne, übrigens.\n");

    let missing = read_text(scratch("x", b"").with_file_name("text-no-such-file.txt"));
    let msg = message(missing.unwrap_err());
    assert!(
        msg.contains("text-no-such-file.txt") && msg.contains("reading"),
        "{msg}"
    );

    let msg = message(read_text(scratch("empty.txt", b"")).unwrap_err());
    assert!(msg.contains("empty.txt is empty"), "{msg}");

    let msg = message(read_text(scratch("elf", b"\x7fELF\x02\x01\x01\x00\x00")).unwrap_err());
    assert!(msg.contains("NUL byte at offset 7"), "{msg}");

    let msg = message(text_from_bytes(b"caf\xe9".to_vec(), "latin1.txt").unwrap_err());
    assert!(
        msg.contains("latin1.txt is not UTF-8 text") && msg.contains("0xe9 at offset 3"),
        "{msg}"
    );

    let dir = std::env::temp_dir();
    let msg = message(read_text(&dir).unwrap_err());
    assert!(msg.contains("is a directory"), "{msg}");
}

#[test]
fn the_vocabulary_is_sorted_and_round_trips() {
    let v = Vocabulary::from_text("hello, world").unwrap();
    assert_eq!(v.chars(), &[' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
    let ids = v.encode("world, hello").unwrap();
    assert_eq!(v.decode(&ids), "world, hello");
    assert_eq!(v.id('h'), Some(4));
    assert_eq!(v.char(4), Some('h'));
    assert_eq!(v.decode(&[99]), "\u{fffd}");

    let v = Vocabulary::from_text("hello,\nworld").unwrap();
    let msg = message(v.encode("hello\nworld!").unwrap_err());
    assert!(
        msg.contains("'!'") && msg.contains("line 2, column 6"),
        "{msg}"
    );
    assert!(Vocabulary::from_chars(vec!['a', 'b', 'a']).is_err());
    assert!(Vocabulary::from_chars(vec![]).is_err());
    assert!(Vocabulary::from_text("").is_err());
}

#[test]
fn the_corpus_holds_out_the_end_of_the_text() {
    let text = "abcdefghij".repeat(10);
    let c = Corpus::new(&text, 0.1).unwrap();
    assert_eq!(c.vocabulary().len(), 10);
    assert_eq!(c.train().len(), 90);
    assert_eq!(c.held_out().len(), 10);
    assert_eq!(c.vocabulary().decode(c.held_out()), "abcdefghij");
    assert_eq!(Corpus::new(&text, 0.0).unwrap().held_out().len(), 0);
    // a tiny fraction still holds out an input and its target
    assert_eq!(Corpus::new(&text, 0.001).unwrap().held_out().len(), 2);

    assert!(Corpus::new(&text, 0.6).is_err());
    assert!(Corpus::new(&text, f64::NAN).is_err());
    assert!(Corpus::new("abc", 0.5).is_err());
    let vocab = Vocabulary::from_text("abc").unwrap();
    let msg = message(Corpus::with_vocabulary("abcd", vocab, 0.0).unwrap_err());
    assert!(msg.contains("'d'"), "{msg}");
}

#[test]
fn streams_cover_the_text_in_consecutive_chunks() {
    let tokens: Vec<u32> = (0..103).collect();
    // 3 streams of 34 tokens (33 with a target), chunks of 10: 4 chunks, the last of 3
    let s = TokenStreams::new(tokens.len(), 3, 10).unwrap();
    assert_eq!(s.chunks_per_pass(), 4);
    assert_eq!(s.tokens_per_pass(), 99);
    let mut seen = vec![Vec::new(); 3];
    for c in 0..s.chunks_per_pass() {
        let (inputs, targets) = s.chunk(&tokens, c);
        assert_eq!(inputs.len(), 3);
        let len = if c == 3 { 3 } else { 10 };
        for (i, (x, y)) in inputs.iter().zip(&targets).enumerate() {
            assert_eq!(x.len(), len);
            // the target is the next token
            assert!(x.iter().zip(y).all(|(a, b)| b == &(a + 1)));
            seen[i].extend_from_slice(x);
        }
    }
    // each stream reads its own segment, in order, once per pass
    for (i, s) in seen.iter().enumerate() {
        let start = 34 * i as u32;
        assert_eq!(s, &(start..start + 33).collect::<Vec<u32>>());
    }
    // chunk indices wrap to the next pass
    assert_eq!(s.chunk(&tokens, 4), s.chunk(&tokens, 0));

    assert!(TokenStreams::new(7, 4, 10).is_err());
    assert!(TokenStreams::new(100, 0, 10).is_err());
    assert!(TokenStreams::new(100, 2, 0).is_err());
    let f = TokenStreams::fitting(50, 64, 10).unwrap();
    assert_eq!(f.streams(), 4);
    assert_eq!(TokenStreams::fitting(5, 64, 10).unwrap().streams(), 1);
    assert!(TokenStreams::fitting(1, 64, 10).is_none());
}

#[test]
fn the_bundled_text_is_a_few_hundred_kilobytes_of_english() {
    assert!((300_000..700_000).contains(&BUNDLED_TEXT.len()));
    assert!(BUNDLED_TEXT.starts_with("Persuasion"));
    assert!(BUNDLED_TEXT.contains("Captain Wentworth"));
    let v = Vocabulary::from_text(BUNDLED_TEXT).unwrap();
    assert!(v.len() < 100, "{} characters", v.len());
    assert_ne!(fingerprint(b"a"), fingerprint(b"b"));
    assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
}

#[test]
fn sampling_refuses_what_has_no_distribution() {
    let mut rng = SplitMix64::new(1);
    let refused = |logits: &[f32], t: f32, rng: &mut SplitMix64| {
        matches!(
            sample_logits(logits, t, rng),
            Err(unfold::Error::InvalidConfig { .. })
        )
    };
    assert!(refused(&[], 1.0, &mut rng));
    assert!(refused(&[f32::NEG_INFINITY; 3], 1.0, &mut rng));
    assert!(refused(&[0.0, f32::NAN, 1.0], 1.0, &mut rng));
    assert!(refused(&[0.0, f32::INFINITY], 0.0, &mut rng));
    for t in [-1.0, f32::NAN, f32::INFINITY] {
        assert!(refused(&[0.0, 10.0], t, &mut rng), "temperature {t}");
    }
    assert_eq!(sample_logits(&[0.0, 10.0], 0.0, &mut rng).unwrap(), 1);
}

#[test]
fn sampling_follows_the_softmax() {
    let mut rng = SplitMix64::new(1);
    let logits = [0.0f32, (3.0f32).ln(), f32::NEG_INFINITY, 0.0];
    assert_eq!(sample_logits(&logits, 0.0, &mut rng).unwrap(), 1);
    let mut counts = [0usize; 4];
    let n = 20_000;
    for _ in 0..n {
        counts[sample_logits(&logits, 1.0, &mut rng).unwrap() as usize] += 1;
    }
    // probabilities 1/5, 3/5, 0, 1/5
    assert_eq!(counts[2], 0);
    for (k, p) in [(0, 0.2), (1, 0.6), (3, 0.2)] {
        let f = counts[k] as f64 / n as f64;
        assert!((f - p).abs() < 0.015, "token {k}: {f} vs {p}");
    }
    // a high temperature flattens, a low one sharpens
    let count_top = |t: f32, rng: &mut SplitMix64| {
        (0..5000)
            .filter(|_| sample_logits(&logits, t, rng).unwrap() == 1)
            .count()
    };
    assert!(count_top(0.25, &mut rng) > count_top(4.0, &mut rng) + 1000);
}

fn token_model(vocab: usize, hidden: usize) -> Rnn {
    let config = RnnConfig::new(vocab, hidden, vocab).num_layers(2);
    Rnn::new(config.clone(), RnnParams::init(&config, 5), &Device::cpu()).unwrap()
}

#[test]
fn stepping_one_token_at_a_time_matches_one_forward_pass() {
    let vocab = 7;
    let mut rnn = token_model(vocab, 12);
    let prime = [3u32, 1, 4];
    let mut rng = SplitMix64::new(9);
    let greedy = sample_tokens(&mut rnn, &prime, 6, 0.0, &mut rng).unwrap();
    assert_eq!(greedy.len(), 6);
    // the whole sequence in one pass: the argmax after each position is the next token
    let all: Vec<u32> = prime.iter().chain(&greedy[..5]).copied().collect();
    let len = all.len();
    let batch =
        SequenceBatch::from_tokens(vec![all], vocab, Targets::Classes(vec![vec![0; len]])).unwrap();
    let out = rnn.forward(&batch).unwrap();
    for (i, &want) in greedy.iter().enumerate() {
        let t = prime.len() - 1 + i;
        let row: Vec<f32> = (0..vocab).map(|k| out.outputs[[0, t, k]]).collect();
        assert_eq!(
            sample_logits(&row, 0.0, &mut rng).unwrap(),
            want,
            "position {t}"
        );
    }
    // the same seed gives the same sample
    let a = sample_tokens(&mut rnn, &prime, 20, 1.0, &mut SplitMix64::new(4)).unwrap();
    let b = sample_tokens(&mut rnn, &prime, 20, 1.0, &mut SplitMix64::new(4)).unwrap();
    assert_eq!(a, b);
    assert!(sample_tokens(&mut rnn, &prime, 0, 1.0, &mut rng)
        .unwrap()
        .is_empty());
}

#[test]
fn sample_text_checks_its_inputs() {
    let vocab = Vocabulary::from_text("the cat sat").unwrap();
    let mut rnn = token_model(vocab.len(), 8);
    let text = sample_text(&mut rnn, &vocab, "the ", 15, 0.8, 2).unwrap();
    assert!(text.starts_with("the "));
    assert_eq!(text.chars().count(), 19);
    assert!(text.chars().all(|c| vocab.id(c).is_some()));

    let msg = message(sample_text(&mut rnn, &vocab, "dog", 5, 0.8, 2).unwrap_err());
    assert!(msg.contains("prime") && msg.contains("'d'"), "{msg}");
    assert!(sample_text(&mut rnn, &vocab, "", 5, 0.8, 2).is_err());
    for t in [-1.0, f32::NAN, f32::INFINITY] {
        let msg = message(sample_text(&mut rnn, &vocab, "the", 5, t, 2).unwrap_err());
        assert!(msg.contains("temperature"), "{msg}");
    }
    let other = Vocabulary::from_text("ab").unwrap();
    assert!(sample_text(&mut rnn, &other, "a", 5, 0.8, 2).is_err());
    // a model that is not a token model
    let config = RnnConfig::new(4, 8, 2).head(Head::LastStep);
    let mut classifier =
        Rnn::new(config.clone(), RnnParams::init(&config, 0), &Device::cpu()).unwrap();
    let mut rng = SplitMix64::new(0);
    assert!(sample_tokens(&mut classifier, &[1], 3, 1.0, &mut rng).is_err());
}
