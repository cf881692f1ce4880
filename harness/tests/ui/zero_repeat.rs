#[leakcheck::test(repeat = 0)]
fn never() {}

fn main() {}
