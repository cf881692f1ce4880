#[leakcheck::test]
async fn no_runtime() {}

fn main() {}
