//! Reading a dataset from CSV: an optional header, the label (or target) in the last column.
//! Every problem is an error naming the file, the line and, where there is one, the column.

use std::path::Path;

use crate::error::Result;

use super::DataError;

/// The numbers of a CSV file: rows of features and one label per row.
pub struct Table {
    pub features: Vec<f64>,
    pub labels: Vec<f64>,
    pub rows: usize,
    pub cols: usize,
    pub header: Option<Vec<String>>,
}

/// Parses CSV text; `source` names it in errors (the path, or a built-in dataset's name).
pub fn parse(source: &str, text: &str) -> std::result::Result<Table, DataError> {
    parse_rows(source, text, Rows::Whole)
}

/// What the text parsed is of its file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// the whole file: a header is allowed, and no data rows is an error
    Whole,
    /// a part of it: the first part may hold the header; any part may hold no rows
    Part { first: bool },
}

fn parse_rows(source: &str, text: &str, rows_of: Rows) -> std::result::Result<Table, DataError> {
    let header_allowed = matches!(rows_of, Rows::Whole | Rows::Part { first: true });
    let err = |line: u64, msg: String| DataError {
        source: source.to_owned(),
        line: Some(line),
        msg,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut header = None;
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut cols = 0;
    let mut rows = 0;
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            err(line, format!("unreadable row: {e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(|cell| cell.is_empty()) {
            continue;
        }
        let numbers: Vec<std::result::Result<f64, _>> = record.iter().map(|cell| cell.parse::<f64>()).collect();
        // a first row of nothing but non-numbers is a header; a mixed one is a bad data row
        if header_allowed && rows == 0 && header.is_none() && numbers.iter().all(|n| n.is_err()) {
            header = Some(record.iter().map(str::to_owned).collect::<Vec<_>>());
            cols = record.len();
            continue;
        }
        if cols == 0 {
            cols = record.len();
        }
        if record.len() != cols {
            return Err(err(line, format!("{} columns, expected {cols}", record.len())));
        }
        if cols < 2 {
            return Err(err(line, "one column: need at least one feature and the label".into()));
        }
        for (c, (cell, number)) in record.iter().zip(numbers).enumerate() {
            let value = number.map_err(|_| err(line, format!("column {}: {cell:?} is not a number", c + 1)))?;
            if !value.is_finite() {
                return Err(err(line, format!("column {}: {cell} (data must be finite)", c + 1)));
            }
            if !(value as f32).is_finite() {
                return Err(err(
                    line,
                    format!(
                        "column {}: {cell} overflows f32, whose largest is {:e}",
                        c + 1,
                        f32::MAX
                    ),
                ));
            }
            if c + 1 < cols {
                features.push(value);
            } else {
                labels.push(value);
            }
        }
        rows += 1;
    }
    if rows == 0 && rows_of == Rows::Whole {
        return Err(DataError {
            source: source.to_owned(),
            line: None,
            msg: "no data rows".into(),
        });
    }
    Ok(Table {
        features,
        labels,
        rows,
        cols,
        header,
    })
}

/// Reads and parses a CSV file.
pub fn read(path: &Path) -> Result<Table> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DataError {
        source: source.clone(),
        line: None,
        msg: format!("cannot read: {e}"),
    })?;
    Ok(parse(&source, &text)?)
}

/// The rows of part `part` of `parts` of a CSV file, reading only that part: the file's bytes
/// are cut into `parts` equal ranges, and a row belongs to the part holding its first byte.
/// Errors name the file's own line numbers (counted, only then, over the bytes before the part).
/// A part may hold no rows; the first holds the header if there is one. Cells must not hold
/// quoted line breaks (a table of numbers has none).
pub fn read_part(path: &Path, part: usize, parts: usize) -> Result<Table> {
    use std::io::{BufRead, Read, Seek, SeekFrom};
    let source = path.display().to_string();
    let fail = |e: std::io::Error| DataError {
        source: source.clone(),
        line: None,
        msg: format!("cannot read: {e}"),
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(fail)?);
    let size = file.get_ref().metadata().map_err(fail)?.len();
    let parts = parts.max(1) as u64;
    // where the first row starting at or after `at` starts
    let mut row_start = |at: u64| -> std::io::Result<u64> {
        if at == 0 || at >= size {
            return Ok(at.min(size));
        }
        file.seek(SeekFrom::Start(at - 1))?;
        let mut skipped = Vec::new();
        let n = file.read_until(b'\n', &mut skipped)? as u64;
        Ok(at - 1 + n)
    };
    let start = row_start(size * part as u64 / parts).map_err(fail)?;
    let end = row_start(size * (part as u64 + 1) / parts).map_err(fail)?;
    let mut bytes = vec![0u8; (end - start) as usize];
    file.seek(SeekFrom::Start(start)).map_err(fail)?;
    file.read_exact(&mut bytes).map_err(fail)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError {
        source: source.clone(),
        line: None,
        msg: format!(
            "not UTF-8 text near byte {}",
            start + e.utf8_error().valid_up_to() as u64
        ),
    })?;
    parse_rows(&source, &text, Rows::Part { first: start == 0 }).map_err(|mut e| {
        // the part's line numbers are its own: add the lines of the file before it
        if let Some(line) = e.line.as_mut() {
            *line += lines_before(path, start).unwrap_or(0);
        }
        e.into()
    })
}

/// Line breaks among a file's first `bytes` bytes.
fn lines_before(path: &Path, bytes: u64) -> std::io::Result<u64> {
    use std::io::Read;
    // through a buffer of fixed size: the last part of a large file starts far in
    let mut prefix = std::fs::File::open(path)?.take(bytes);
    let (mut buf, mut lines) = (vec![0u8; 1 << 20], 0u64);
    loop {
        match prefix.read(&mut buf) {
            Ok(0) => return Ok(lines),
            Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_file_hold_its_rows_once_each_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        let mut text = String::from("a,b,label\n");
        for i in 0..37 {
            text.push_str(&format!("{i},{},{}\n", i * i, i % 3));
            if i % 7 == 0 {
                text.push('\n');
            }
        }
        std::fs::write(&path, &text).unwrap();
        let whole = read(&path).unwrap();
        for parts in [1, 2, 3, 5, 64] {
            let tables: Vec<Table> = (0..parts).map(|p| read_part(&path, p, parts).unwrap()).collect();
            let labels: Vec<f64> = tables.iter().flat_map(|t| t.labels.clone()).collect();
            let features: Vec<f64> = tables.iter().flat_map(|t| t.features.clone()).collect();
            assert_eq!(labels, whole.labels, "{parts} parts");
            assert_eq!(features, whole.features, "{parts} parts");
            assert!(tables[0].header.is_some());
        }
    }

    #[test]
    fn a_part_names_the_files_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.csv");
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("{i},{}\n", i % 2));
        }
        text.push_str("x,1\n");
        std::fs::write(&path, &text).unwrap();
        let e = read_part(&path, 1, 2).err().unwrap().to_string();
        assert!(e.ends_with("bad.csv line 41: column 1: \"x\" is not a number"), "{e}");
    }

    #[test]
    fn header_is_optional_and_blank_lines_are_skipped() {
        let with = parse("t", "a,b,label\n1,2,0\n\n3,4,1\n")
            .map_err(|e| e.to_string())
            .unwrap();
        assert_eq!((with.rows, with.cols, with.labels.clone()), (2, 3, vec![0.0, 1.0]));
        assert_eq!(with.header.unwrap()[2], "label");
        let without = parse("t", "1,2,0\n3,4,1\n").map_err(|e| e.to_string()).unwrap();
        assert_eq!(without.features, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn values_beyond_f32_are_refused_where_they_stand() {
        let e = parse("big.csv", "a,b,y\n1,2,0\n3,1e39,1\n")
            .err()
            .expect("an error")
            .to_string();
        assert!(
            e.contains("big.csv") && e.contains("line 3") && e.contains("column 2") && e.contains("1e39"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let cases = [
            ("a,b,c\n1,2,0\n1,2\n", "t line 3: 2 columns, expected 3"),
            ("1,2,0\n1,x,1\n", "t line 2: column 2: \"x\" is not a number"),
            ("1,2,0\n1,NaN,1\n", "t line 2: column 2: NaN (data must be finite)"),
            ("1,2,0\n1,inf,1\n", "t line 2: column 2: inf (data must be finite)"),
            ("a,b,c\n", "t: no data rows"),
            ("", "t: no data rows"),
            (
                "5\n6\n",
                "t line 1: one column: need at least one feature and the label",
            ),
            ("1,x,0\n1,2,1\n", "t line 1: column 2: \"x\" is not a number"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse("t", text).err().map(|e| e.to_string()).as_deref(),
                Some(expected),
                "{text:?}"
            );
        }
    }
}
