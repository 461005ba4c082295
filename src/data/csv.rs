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
        if rows == 0 && header.is_none() && numbers.iter().all(|n| n.is_err()) {
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
    if rows == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
