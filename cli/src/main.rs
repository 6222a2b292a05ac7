//! The `fovea` command line.
fn main() {}
