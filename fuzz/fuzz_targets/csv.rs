//! The CSV loader on any bytes: a table or an error naming the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = natgrad::data::csv::parse("fuzz.csv", &text) {
        assert!(e.to_string().starts_with("fuzz.csv"));
    }
});
