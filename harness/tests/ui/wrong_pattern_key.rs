#[leakcheck::test(allow(thread, cmdline = "sleep *", reason = "wrong key for threads"))]
fn threads() {}

fn main() {}
