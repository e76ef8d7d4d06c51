//! The simulator (filled next).
