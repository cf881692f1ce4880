#[leakcheck::test(allow(thread, name = "pool-*"))]
fn pool() {}

fn main() {}
