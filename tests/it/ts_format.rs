//! The UEA/UCR `.ts` reader: a valid file, every kind of malformed input (an error naming
//! the line, never a panic), and the bundled JapaneseVowels files.

use std::path::Path;
use unfold::data::{parse_ts, read_ts};
use unfold::rng::SplitMix64;
use unfold::Error;

const HEADER: &str = "\
# a comment
#another comment

@problemName Toy
@timeStamps false
@missing false
@univariate false
@dimensions 2
@equalLength false
@classLabel true a b c
@data
";

/// Line number of the first case (the line after @data).
const FIRST_CASE: usize = 12;

fn parse(text: &str) -> unfold::Result<unfold::data::Dataset> {
    parse_ts(text, "toy.ts")
}

/// Parses HEADER + `cases` and checks the error is a parse error at `line` whose message
/// names the file and line and contains `needle`.
fn assert_parse_error(cases: &str, line: usize, needle: &str) {
    let text = format!("{HEADER}{cases}");
    match parse(&text) {
        Err(Error::Parse {
            path,
            line: got,
            reason,
        }) => {
            let message = Error::Parse {
                path: path.clone(),
                line: got,
                reason: reason.clone(),
            }
            .to_string();
            eprintln!("{message}");
            assert_eq!(got, line, "wrong line in {message:?}");
            assert_eq!(path, Path::new("toy.ts"));
            assert!(
                message.starts_with(&format!("toy.ts:{line}: ")),
                "{message:?}"
            );
            assert!(
                reason.to_lowercase().contains(&needle.to_lowercase()),
                "{message:?} does not say {needle:?}"
            );
        }
        other => panic!("expected a parse error at line {line} ({needle}), got {other:?}"),
    }
}

#[test]
fn parses_a_valid_file() {
    let text = format!(
        "{HEADER}1,2,3:4,5,6:b\n\n# between cases\n 0.5 , -1e-3 : 7 , 8 :a \n-2:3.25:c\r\n"
    );
    let data = parse(&text).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.num_features(), 2);
    assert_eq!(data.class_names(), ["a", "b", "c"]);
    assert_eq!(data.labels(), [1, 0, 2]);
    assert_eq!(data.lengths(), vec![3, 2, 1]);
    // [len, dimensions]: x[t, d] is value t of dimension d
    let x = &data.inputs()[0];
    assert_eq!(x.shape(), [3, 2]);
    assert_eq!(x.row(1).to_vec(), vec![2.0, 5.0]);
    assert_eq!(data.inputs()[1].row(0).to_vec(), vec![0.5, 7.0]);
    assert_eq!(data.inputs()[1][[1, 0]], -1e-3);
    assert_eq!(data.inputs()[2].row(0).to_vec(), vec![-2.0, 3.25]);
}

#[test]
fn header_tags_are_case_insensitive_and_dimensions_can_be_inferred() {
    let text = "@PROBLEMNAME x\n@ClassLabel TRUE 0 1\n@data\n1,2:0\n3,4:1\n";
    let data = parse(text).unwrap();
    assert_eq!(data.num_features(), 1);
    assert_eq!(data.lengths(), vec![2, 2]);
    let two = "@classLabel true 0 1\n@data\n1:2:0\n3:4:5:1\n";
    let e = parse(two).unwrap_err();
    assert!(matches!(e, Error::Parse { line: 4, .. }), "{e}");
    // univariate without @dimensions
    let uni = "@univariate true\n@classLabel true x\n@data\n1,2,3:x\n";
    assert_eq!(parse(uni).unwrap().num_features(), 1);
}

#[test]
fn wrong_dimension_count() {
    assert_parse_error(
        "1,2:3,4:a\n1,2:a\n",
        FIRST_CASE + 1,
        "expected 2 dimensions, found 1",
    );
    assert_parse_error("1:2:3:a\n", FIRST_CASE, "expected 2 dimensions, found 3");
}

#[test]
fn non_numeric_value() {
    assert_parse_error(
        "1,2:3,4:a\n\n1,x2:3,4:b\n",
        FIRST_CASE + 2,
        "\"x2\" is not a finite number",
    );
    assert_parse_error("1,2:3,,4:a\n", FIRST_CASE, "dimension 2, value 2");
    assert_parse_error(
        "1,?:3,4:a\n",
        FIRST_CASE,
        "missing values are not supported",
    );
    assert_parse_error("1,NaN:3,4:a\n", FIRST_CASE, "not a finite number");
    assert_parse_error("1,inf:3,4:a\n", FIRST_CASE, "not a finite number");
}

#[test]
fn missing_label() {
    assert_parse_error(
        "1,2:3,4:a\n1,2:3,4:\n",
        FIRST_CASE + 1,
        "missing class label",
    );
    assert_parse_error("1,2:3,4\n", FIRST_CASE, "missing class label");
    assert_parse_error("1,2\n", FIRST_CASE, "missing class label");
}

#[test]
fn unknown_class() {
    assert_parse_error("1,2:3,4:d\n", FIRST_CASE, "unknown class label \"d\"");
    assert_parse_error("1,2:3,4:A\n", FIRST_CASE, "@classLabel lists a b c");
}

#[test]
fn empty_series() {
    assert_parse_error(
        "1,2:3,4:a\n:3,4:a\n",
        FIRST_CASE + 1,
        "dimension 1 is an empty series",
    );
    assert_parse_error("1,2: :b\n", FIRST_CASE, "dimension 2 is an empty series");
}

#[test]
fn dimensions_of_different_lengths() {
    assert_parse_error(
        "1,2,3:4,5:c\n",
        FIRST_CASE,
        "dimension 1 has 3 values, dimension 2 has 2",
    );
}

#[test]
fn header_problems() {
    let cases: &[(&str, usize, &str)] = &[
        ("@classLabel true a\n", 1, "no @data"),
        ("@classLabel true a\n@data\n\n# nothing\n", 2, "no cases"),
        (
            "@classLabel true a\n@data\n1:a\n@missing false\n",
            4,
            "header line after @data",
        ),
        ("@data\n1:a\n", 1, "before @classLabel"),
        ("@classLabel false\n@data\n1\n", 1, "needs class labels"),
        ("@classLabel true\n@data\n1\n", 1, "no class labels"),
        ("@classLabel true a a\n@data\n1:a\n", 1, "listed twice"),
        ("@classLabel maybe a\n@data\n1:a\n", 1, "@classLabel"),
        ("@timeStamps true\n", 1, "not supported"),
        ("@missing true\n", 1, "not supported"),
        ("@missing perhaps\n", 1, "true or false"),
        ("@dimensions 0\n", 1, "positive integer"),
        ("@dimensions two\n", 1, "positive integer"),
        ("@targetLabel true\n", 1, "regression"),
        ("@data extra\n", 1, "no value"),
        ("# c\n1,2:a\n", 2, "header line"),
        ("", 1, "no @data"),
        (
            "@univariate true\n@dimensions 3\n@classLabel true a\n@data\n",
            4,
            "contradicts",
        ),
        (
            "@equalLength true\n@seriesLength 3\n@classLabel true a\n@data\n1,2,3:a\n1,2:a\n",
            6,
            "@seriesLength is 3",
        ),
    ];
    for &(text, line, needle) in cases {
        match parse(text) {
            Err(e @ Error::Parse { line: got, .. }) => {
                assert_eq!(got, line, "{text:?}: {e}");
                assert!(
                    e.to_string().contains(needle),
                    "{text:?}: {e} lacks {needle:?}"
                );
            }
            other => panic!("{text:?}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn missing_file_is_an_io_error() {
    let e = read_ts("/nonexistent/unfold/x.ts").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/unfold/x.ts"), "{e}");
}

fn bundled(which: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/JapaneseVowels")
        .join(format!("JapaneseVowels_{which}.ts"))
}

#[test]
fn bundled_japanese_vowels_parse_with_the_right_counts() {
    let train = read_ts(bundled("TRAIN")).unwrap();
    let test = read_ts(bundled("TEST")).unwrap();
    assert_eq!((train.len(), test.len()), (270, 370));
    let classes: Vec<String> = (1..=9).map(|k| k.to_string()).collect();
    for data in [&train, &test] {
        assert_eq!(data.num_features(), 12);
        assert_eq!(data.class_names(), classes.as_slice());
        assert!(data.lengths().iter().all(|l| (7..=29).contains(l)));
    }
    let all: Vec<usize> = train.lengths().into_iter().chain(test.lengths()).collect();
    assert_eq!(all.iter().min(), Some(&7));
    assert_eq!(all.iter().max(), Some(&29));
    assert_eq!(
        train.class_counts(),
        vec![30; 9],
        "30 utterances per speaker"
    );
    assert_eq!(
        test.class_counts(),
        vec![31, 35, 88, 44, 29, 24, 40, 50, 29]
    );
    // first value of the first training case, dimension 1 and 2
    assert_eq!(train.inputs()[0][[0, 0]], 1.860936);
    assert_eq!(train.inputs()[0][[0, 1]], -0.207383);
    assert_eq!(train.inputs()[0].nrows(), 20);
}

/// Truncated and corrupted copies of a real file: an `Ok` or an `Err`, never a panic.
#[test]
fn corrupted_input_never_panics() {
    let text = std::fs::read_to_string(bundled("TRAIN")).unwrap();
    // the header and the first 5 cases
    let end = text
        .match_indices('\n')
        .nth(text.lines().position(|l| l.starts_with("@data")).unwrap() + 5)
        .unwrap()
        .0;
    let small = &text[..end];
    let bytes = small.as_bytes();
    let mut rng = SplitMix64::new(3);
    let (mut ok, mut err) = (0, 0);
    for i in 0..400 {
        let mut b: Vec<u8> = if i % 2 == 0 {
            bytes[..rng.below(bytes.len())].to_vec()
        } else {
            bytes.to_vec()
        };
        for _ in 0..rng.below(4) {
            if b.is_empty() {
                break;
            }
            let at = rng.below(b.len());
            b[at] = b":,.-e@#\n 0x?"[rng.below(12)];
        }
        let s = String::from_utf8_lossy(&b);
        match parse_ts(&s, "corrupt.ts") {
            Ok(d) => {
                assert!(d.len() <= 5);
                ok += 1;
            }
            Err(Error::Parse { .. }) => err += 1,
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}
