//! Property tests of the CSV loader over generated files: any table of finite numbers reads back
//! exactly, whatever its spacing, header and blank lines; any text at all gives a table or a
//! located error, never a panic.

use natgrad::data::csv::parse;
use proptest::prelude::*;

/// A table of `rows × cols` finite values (integers, plain decimals, exponents, negatives).
fn table() -> impl Strategy<Value = Vec<Vec<f64>>> {
    (1usize..12, 2usize..7).prop_flat_map(|(rows, cols)| {
        let value = prop_oneof![
            (-1000i64..1000).prop_map(|v| v as f64),
            (-1e6f64..1e6),
            (-30i32..30, 1.0f64..10.0).prop_map(|(e, m)| m * 10f64.powi(e)),
        ];
        prop::collection::vec(prop::collection::vec(value, cols), rows)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_tables_read_back_exactly(
        rows in table(),
        header in any::<bool>(),
        spaces in any::<bool>(),
        blank_every in 0usize..4,
    ) {
        let cols = rows[0].len();
        let sep = if spaces { " , " } else { "," };
        let mut text = String::new();
        if header {
            let names: Vec<String> = (0..cols).map(|c| format!("col{c}")).collect();
            text.push_str(&names.join(sep));
            text.push('\n');
        }
        for (r, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
            text.push_str(&cells.join(sep));
            text.push('\n');
            if blank_every > 0 && r % blank_every == 0 {
                text.push('\n');
            }
        }
        let t = parse("generated.csv", &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(t.rows, rows.len());
        prop_assert_eq!(t.cols, cols);
        prop_assert_eq!(t.header.is_some(), header);
        let features: Vec<f64> = rows.iter().flat_map(|r| r[..cols - 1].to_vec()).collect();
        let labels: Vec<f64> = rows.iter().map(|r| r[cols - 1]).collect();
        prop_assert_eq!(t.features, features);
        prop_assert_eq!(t.labels, labels);
    }

    #[test]
    fn any_text_is_a_table_or_a_located_error(text in "[0-9a-z.,eE+\\- \\n\\t\"]{0,200}") {
        if let Err(e) = parse("any.csv", &text) {
            let message = e.to_string();
            prop_assert!(message.starts_with("any.csv"), "{}", message);
        }
    }
}
