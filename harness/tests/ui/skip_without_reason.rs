#[leakcheck::test(skip(heap))]
fn unmeasured() {}

fn main() {}
