//! Compile errors of `#[leakcheck::test]`: one precise, spanned message per
//! mistake (expected output in tests/ui/*.stderr; regenerate with
//! `TRYBUILD=overwrite cargo test -p leakcheck --test ui` and review).

#[test]
fn bad_options_are_spanned_compile_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
