//! ABI oracle (filled next).
