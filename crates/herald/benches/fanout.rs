//! Placeholder: replaced by the hub fan-out benchmark.
fn main() {}
