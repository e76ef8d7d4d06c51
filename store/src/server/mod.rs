//! In-memory xenstored core (being written).
