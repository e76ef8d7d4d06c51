//! Benchmarks (filled next).
