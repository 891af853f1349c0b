//! Placeholder: written by its issue.
fn main() {}
