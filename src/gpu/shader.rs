//! The WGSL sources, compiled into the binary, and the small preprocessor that specialises them.
//!
//! Directives, each on a line of its own: `#import NAME` pastes `shaders/shared/NAME.wgsl` (once
//! per module); `#ifdef NAME` / `#ifndef NAME` / `#else` / `#endif` keep or drop lines by the
//! defines of a [`Variant`]. A variant may also override `const NAME: u32 = ...;` declarations,
//! which is how tile sizes follow the adapter.

use std::collections::BTreeSet;

/// Kernel families: the file `shaders/NAME.wgsl` is the kernel `NAME`.
pub const KERNELS: &[(&str, &str)] = &[
    ("fisher", include_str!("../../shaders/fisher.wgsl")),
    ("linalg", include_str!("../../shaders/linalg.wgsl")),
    ("cg", include_str!("../../shaders/cg.wgsl")),
    ("pcg", include_str!("../../shaders/pcg.wgsl")),
    ("blas2", include_str!("../../shaders/blas2.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("mlp", include_str!("../../shaders/mlp.wgsl")),
    ("optim", include_str!("../../shaders/optim.wgsl")),
];

/// Files under `shaders/shared/`, available to `#import`.
const SHARED: &[(&str, &str)] = &[
    ("reduce", include_str!("../../shaders/shared/reduce.wgsl")),
    ("rng", include_str!("../../shaders/shared/rng.wgsl")),
];

/// One specialisation of a kernel: which `#ifdef` names are defined and which `u32` constants
/// are overridden.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variant {
    pub defines: BTreeSet<&'static str>,
    /// (name, WGSL literal) pairs that replace the value of `const name: T = ...;`
    pub consts: Vec<(&'static str, String)>,
}

impl Variant {
    pub fn define(mut self, name: &'static str, on: bool) -> Self {
        if on {
            self.defines.insert(name);
        }
        self
    }

    pub fn with_u32(mut self, name: &'static str, value: u32) -> Self {
        self.consts.push((name, format!("{value}u")));
        self
    }

    pub fn with_f32(mut self, name: &'static str, value: f32) -> Self {
        self.consts.push((name, format!("{value:e}")));
        self
    }

    /// Whether the variant needs the adapter's subgroup support.
    pub fn uses_subgroups(&self) -> bool {
        self.defines.contains("SUBGROUPS")
    }
}

/// The raw source of kernel `name`.
pub fn raw_source(name: &str) -> Option<&'static str> {
    KERNELS.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The WGSL of kernel `name` specialised to `variant`; errors name the kernel and the line.
pub fn source(name: &str, variant: &Variant) -> Result<String, String> {
    let raw = raw_source(name).ok_or_else(|| format!("no kernel named {name:?}"))?;
    let mut out = super::sizes::prelude();
    let mut imported = BTreeSet::new();
    let mut applied = BTreeSet::new();
    expand(name, raw, variant, &mut imported, &mut applied, &mut out)?;
    if let Some((c, _)) = variant.consts.iter().find(|(c, _)| !applied.contains(c)) {
        return Err(format!("{name}.wgsl: no `const {c}` to override"));
    }
    Ok(out)
}

fn expand(
    file: &str,
    text: &str,
    variant: &Variant,
    imported: &mut BTreeSet<String>,
    applied: &mut BTreeSet<&'static str>,
    out: &mut String,
) -> Result<(), String> {
    // one entry per open #if: (this branch is kept, the enclosing block is kept)
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let keeping = |stack: &[(bool, bool)]| stack.last().is_none_or(|(kept, outer)| *kept && *outer);
    for (index, line) in text.lines().enumerate() {
        let at = || format!("{file}.wgsl line {}", index + 1);
        let trimmed = line.trim_start();
        if let Some(directive) = trimmed.strip_prefix('#') {
            let mut words = directive.split_whitespace();
            let (word, arg) = (words.next().unwrap_or(""), words.next());
            match (word, arg) {
                ("ifdef", Some(n)) | ("ifndef", Some(n)) => {
                    let on = variant.defines.contains(n) == (word == "ifdef");
                    stack.push((on, keeping(&stack)));
                }
                ("else", None) => match stack.last_mut() {
                    Some(top) => top.0 = !top.0,
                    None => return Err(format!("{}: #else without #ifdef", at())),
                },
                ("endif", None) => {
                    stack.pop().ok_or_else(|| format!("{}: #endif without #ifdef", at()))?;
                }
                ("import", Some(n)) => {
                    if keeping(&stack) && imported.insert(n.to_owned()) {
                        let shared = SHARED
                            .iter()
                            .find(|(s, _)| *s == n)
                            .ok_or_else(|| format!("{}: no shared file {n:?} to import", at()))?;
                        expand(&format!("shared/{n}"), shared.1, variant, imported, applied, out)?;
                    }
                }
                _ => return Err(format!("{}: unknown directive {trimmed:?}", at())),
            }
            continue;
        }
        if !keeping(&stack) {
            continue;
        }
        match const_override(trimmed, variant) {
            Some((name, ty, value)) => {
                applied.insert(name);
                out.push_str(&format!("const {name}: {ty} = {value};\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !stack.is_empty() {
        return Err(format!("{file}.wgsl: #ifdef without #endif"));
    }
    Ok(())
}

/// The override for a line `const NAME: T = ...;`, if the variant has one for NAME: (name, T, value).
fn const_override<'v>(line: &str, variant: &'v Variant) -> Option<(&'static str, String, &'v str)> {
    let rest = line.strip_prefix("const ")?;
    let (name, rest) = rest.split_once(':')?;
    let (ty, _) = rest.split_once('=')?;
    let (c, value) = variant.consts.iter().find(|(c, _)| *c == name.trim())?;
    Some((c, ty.trim().to_owned(), value.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifdef_else_and_overrides() {
        let v = Variant::default().define("A", true).with_u32("TILE", 128);
        let mut imported = BTreeSet::new();
        let mut applied = BTreeSet::new();
        let mut out = String::new();
        let text = "#ifdef A\na\n#else\nnot a\n#endif\n#ifndef A\nnot a 2\n#endif\nconst TILE: u32 = 64u;\n";
        expand("t", text, &v, &mut imported, &mut applied, &mut out).unwrap();
        assert_eq!(out, "a\nconst TILE: u32 = 128u;\n");
        assert!(applied.contains("TILE"));
    }

    #[test]
    fn nested_blocks_follow_the_outer_one() {
        let v = Variant::default().define("B", true);
        let mut out = String::new();
        let text = "#ifdef A\n#ifdef B\nab\n#endif\n#else\nnot a\n#endif\n";
        expand("t", text, &v, &mut BTreeSet::new(), &mut BTreeSet::new(), &mut out).unwrap();
        assert_eq!(out, "not a\n");
    }

    #[test]
    fn malformed_sources_are_errors() {
        let v = Variant::default();
        for bad in ["#endif\n", "#ifdef A\n", "#frobnicate\n", "#import nothing\n"] {
            let mut out = String::new();
            let r = expand("t", bad, &v, &mut BTreeSet::new(), &mut BTreeSet::new(), &mut out);
            assert!(r.is_err(), "{bad:?} should fail");
        }
        assert!(source("fisher", &Variant::default().with_u32("NOPE", 1)).is_err());
    }
}
