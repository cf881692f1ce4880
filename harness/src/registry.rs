//! What a `#[leakcheck::test]` registers for `leakcheck::main!()`.

use crate::options::Options;

/// One `#[leakcheck::test]`, registered for `leakcheck::main!()`.
#[derive(Debug)]
pub struct TestDef {
    /// `module_path!()` of the test: the crate name, then modules.
    pub module_path: &'static str,
    /// The function's name.
    pub name: &'static str,
    /// Runs the test body; `Err` carries a failure message.
    pub run: fn() -> Result<(), String>,
    /// `Some(reason)` when `#[ignore]`d (the reason may be empty).
    pub ignore: Option<&'static str>,
    /// `#[should_panic]`, with its `expected` text if any.
    pub should_panic: ShouldPanic,
    /// The test's options.
    pub options: Options,
}

impl TestDef {
    /// The name libtest would give the test: modules below the crate, then the name.
    pub fn full_name(&self) -> String {
        match self.module_path.split_once("::") {
            Some((_, modules)) => format!("{modules}::{}", self.name),
            None => self.name.to_owned(),
        }
    }
}

/// `#[should_panic]` of a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShouldPanic {
    /// Not a should-panic test.
    No,
    /// Must panic.
    Yes,
    /// Must panic with a message containing this text.
    WithMessage(&'static str),
}
