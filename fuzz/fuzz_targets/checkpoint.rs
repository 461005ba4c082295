//! The checkpoint and state loaders on any bytes: a loaded file or an error, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = natgrad::io::checkpoint::Checkpoint::from_bytes(Path::new("fuzz.safetensors"), data);
    let _ = natgrad::io::state::from_bytes(Path::new("fuzz.safetensors"), data);
});
