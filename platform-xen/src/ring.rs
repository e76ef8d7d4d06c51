//! Shared rings (filled next).
