#[leakcheck::test(allow(socket, reason = "kept"))]
fn sockets() {}

fn main() {}
