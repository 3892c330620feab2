//! The UEA/UCR time-series classification format (`.ts`, as written by sktime and the
//! timeseriesclassification.com archive), for problems with class labels.
//!
//! ```text
//! # comment lines start with '#'
//! @problemName JapaneseVowels
//! @timeStamps false
//! @missing false
//! @univariate false
//! @dimensions 12
//! @equalLength false
//! @classLabel true 1 2 3 4 5 6 7 8 9
//! @data
//! 1.86,1.89,1.93:-0.20,-0.19,-0.23: ... :1
//! ```
//!
//! After `@data`, each line is one case: its dimensions separated by `:`, each a
//! comma-separated series of values over time, then the class label. All dimensions of a
//! case have the same length; cases may differ in length. A case becomes a
//! `[len, dimensions]` array, and its label the position of the label in `@classLabel`.
//! Header tags are case-insensitive; unknown ones are ignored. Time stamps, missing
//! values and regression targets are not supported and are refused with an error.

use super::Dataset;
use crate::{Error, Result};
use ndarray::Array2;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Reads a `.ts` file with class labels.
pub fn read_ts(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    parse_ts(&text, path)
}

/// Parses the text of a `.ts` file; `path` only names the source in error messages.
pub fn parse_ts(text: &str, path: impl AsRef<Path>) -> Result<Dataset> {
    Parser {
        path: path.as_ref().to_path_buf(),
        dimensions: None,
        series_length: None,
        equal_length: None,
        class_labels: None,
        class_index: HashMap::new(),
        univariate: None,
    }
    .parse(text)
}

struct Parser {
    path: PathBuf,
    dimensions: Option<usize>,
    series_length: Option<usize>,
    equal_length: Option<bool>,
    class_labels: Option<Vec<String>>,
    /// The position of each label in `class_labels`: one lookup per case, not a search.
    class_index: HashMap<String, usize>,
    univariate: Option<bool>,
}

impl Parser {
    fn error(&self, line: usize, reason: impl Into<String>) -> Error {
        Error::Parse {
            path: self.path.clone(),
            line,
            reason: reason.into(),
        }
    }

    fn parse(mut self, text: &str) -> Result<Dataset> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut data_line = None;
        let mut inputs = Vec::new();
        let mut labels = Vec::new();
        let mut last_line = 0;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            last_line = line_no;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if data_line.is_none() {
                if !line.starts_with('@') {
                    return Err(self.error(
                        line_no,
                        "expected a header line starting with '@' (or '#' for a comment) before @data",
                    ));
                }
                if self.header(line, line_no)? {
                    data_line = Some(line_no);
                }
                continue;
            }
            if line.starts_with('@') {
                return Err(self.error(
                    line_no,
                    format!(
                        "header line after @data (line {})",
                        data_line.unwrap_or_default()
                    ),
                ));
            }
            let (x, label) = self.case(line, line_no)?;
            inputs.push(x);
            labels.push(label);
        }
        let Some(data_line) = data_line else {
            return Err(self.error(
                last_line.max(1),
                "no @data line: the file ends in its header",
            ));
        };
        if inputs.is_empty() {
            return Err(self.error(data_line, "no cases after @data"));
        }
        let class_names = self.class_labels.take().unwrap_or_default();
        Dataset::new(inputs, labels, class_names)
    }

    /// An error saying `why` when `set` (a flag this reader does not support is true).
    fn unsupported(&self, set: bool, line_no: usize, why: &str) -> Result<()> {
        if set {
            Err(self.error(line_no, why))
        } else {
            Ok(())
        }
    }

    /// One header line; true for `@data`.
    fn header(&mut self, line: &str, line_no: usize) -> Result<bool> {
        let mut words = line.split_whitespace();
        let tag = words.next().unwrap_or("").to_ascii_lowercase();
        let rest: Vec<&str> = words.collect();
        let flag = |this: &Self, rest: &[&str]| -> Result<bool> {
            match rest {
                [v] if v.eq_ignore_ascii_case("true") => Ok(true),
                [v] if v.eq_ignore_ascii_case("false") => Ok(false),
                _ => Err(this.error(
                    line_no,
                    format!(
                        "{tag} takes one value, true or false, got {:?}",
                        rest.join(" ")
                    ),
                )),
            }
        };
        let count = |this: &Self, rest: &[&str]| -> Result<usize> {
            match rest {
                [v] => match v.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(this.error(
                        line_no,
                        format!("{tag} takes a positive integer, got {v:?}"),
                    )),
                },
                _ => Err(this.error(
                    line_no,
                    format!("{tag} takes one positive integer, got {:?}", rest.join(" ")),
                )),
            }
        };
        match tag.as_str() {
            "@data" => {
                if !rest.is_empty() {
                    return Err(self.error(line_no, "@data takes no value"));
                }
                if self.class_labels.is_none() {
                    return Err(self.error(
                        line_no,
                        "@data before @classLabel: this reader needs class labels (@classLabel true ...)",
                    ));
                }
                if self.univariate == Some(true) {
                    match self.dimensions {
                        None => self.dimensions = Some(1),
                        Some(1) => {}
                        Some(d) => {
                            return Err(self.error(
                                line_no,
                                format!("@univariate true contradicts @dimensions {d}"),
                            ))
                        }
                    }
                }
                return Ok(true);
            }
            "@problemname" => {}
            "@timestamps" => self.unsupported(
                flag(self, &rest)?,
                line_no,
                "@timeStamps true is not supported (only series without time stamps)",
            )?,
            "@missing" => self.unsupported(
                flag(self, &rest)?,
                line_no,
                "@missing true is not supported: every value must be a number",
            )?,
            "@univariate" => self.univariate = Some(flag(self, &rest)?),
            "@dimensions" | "@dimension" => self.dimensions = Some(count(self, &rest)?),
            "@equallength" => self.equal_length = Some(flag(self, &rest)?),
            "@serieslength" => self.series_length = Some(count(self, &rest)?),
            "@classlabel" => {
                let (has, labels) = match rest.split_first() {
                    Some((v, labels)) if v.eq_ignore_ascii_case("true") => (true, labels),
                    Some((v, labels)) if v.eq_ignore_ascii_case("false") => (false, labels),
                    _ => {
                        return Err(self.error(
                            line_no,
                            "@classLabel must be followed by true and the class labels",
                        ))
                    }
                };
                if !has {
                    return Err(
                        self.error(line_no, "@classLabel false: this reader needs class labels")
                    );
                }
                if labels.is_empty() {
                    return Err(self.error(line_no, "@classLabel true lists no class labels"));
                }
                let mut names: Vec<String> = Vec::with_capacity(labels.len());
                let mut index = HashMap::with_capacity(labels.len());
                for l in labels {
                    if index.insert(l.to_string(), names.len()).is_some() {
                        return Err(self.error(
                            line_no,
                            format!("class label {l:?} is listed twice in @classLabel"),
                        ));
                    }
                    names.push(l.to_string());
                }
                self.class_labels = Some(names);
                self.class_index = index;
            }
            "@targetlabel" => {
                return Err(self.error(
                    line_no,
                    "@targetLabel (regression) is not supported: this reader needs class labels",
                ))
            }
            _ => {} // unknown tags are ignored
        }
        Ok(false)
    }

    /// One case line: `[len, dimensions]` and the class index.
    fn case(&mut self, line: &str, line_no: usize) -> Result<(Array2<f32>, u32)> {
        let fields: Vec<&str> = line.split(':').collect();
        let (label, dims) = fields.split_last().unwrap_or((&"", &[]));
        let label = label.trim();
        let class_labels = self.class_labels.as_deref().unwrap_or_default();
        if label.is_empty() || label.contains(',') || dims.is_empty() {
            let last = if label.is_empty() {
                "the line ends with ':'".to_string()
            } else {
                format!("the last ':'-separated field is {}", shorten(label))
            };
            return Err(self.error(
                line_no,
                format!(
                    "missing class label: {last}; a case is its dimensions separated by ':', then a label from @classLabel ({})",
                    class_labels.join(" ")
                ),
            ));
        }
        let Some(&class) = self.class_index.get(label) else {
            return Err(self.error(
                line_no,
                format!(
                    "unknown class label {}: @classLabel lists {}",
                    shorten(label),
                    class_labels.join(" ")
                ),
            ));
        };
        let expected = *self.dimensions.get_or_insert(dims.len());
        if dims.len() != expected {
            return Err(self.error(
                line_no,
                format!(
                    "expected {expected} dimensions, found {} (dimensions are separated by ':', the class label comes last)",
                    dims.len()
                ),
            ));
        }
        let mut series: Vec<Vec<f32>> = Vec::with_capacity(expected);
        for (d, text) in dims.iter().enumerate() {
            let text = text.trim();
            if text.is_empty() {
                return Err(self.error(line_no, format!("dimension {} is an empty series", d + 1)));
            }
            let mut values = Vec::new();
            for (t, v) in text.split(',').enumerate() {
                let v = v.trim();
                let parsed = match v.parse::<f32>() {
                    Ok(x) if x.is_finite() => x,
                    Ok(_) | Err(_) => {
                        let why = if v == "?" || v.eq_ignore_ascii_case("nan") {
                            " (missing values are not supported)"
                        } else {
                            ""
                        };
                        return Err(self.error(
                            line_no,
                            format!(
                                "dimension {}, value {}: {} is not a finite number{why}",
                                d + 1,
                                t + 1,
                                shorten(v)
                            ),
                        ));
                    }
                };
                values.push(parsed);
            }
            series.push(values);
        }
        let len = series[0].len();
        if let Some((d, s)) = series.iter().enumerate().find(|(_, s)| s.len() != len) {
            return Err(self.error(
                line_no,
                format!(
                    "dimensions have different lengths: dimension 1 has {len} values, dimension {} has {}",
                    d + 1,
                    s.len()
                ),
            ));
        }
        if self.equal_length == Some(true) {
            if let Some(want) = self.series_length {
                if len != want {
                    return Err(self.error(
                        line_no,
                        format!("series of length {len}, but @seriesLength is {want} and @equalLength is true"),
                    ));
                }
            }
        }
        let x = Array2::from_shape_fn((len, expected), |(t, d)| series[d][t]);
        Ok((x, class as u32))
    }
}

/// A field quoted for an error message, cut short if long.
fn shorten(s: &str) -> String {
    if s.chars().count() > 40 {
        format!("{:?}...", s.chars().take(40).collect::<String>())
    } else {
        format!("{s:?}")
    }
}
