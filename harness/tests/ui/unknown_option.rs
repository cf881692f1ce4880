#[leakcheck::test(timeout = "5s")]
fn slow() {}

fn main() {}
