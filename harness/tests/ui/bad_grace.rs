#[leakcheck::test(grace = "soon")]
fn eventually() {}

fn main() {}
