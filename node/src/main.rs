//! `disk-io-node`: placeholder until the serve command lands.
fn main() {}
