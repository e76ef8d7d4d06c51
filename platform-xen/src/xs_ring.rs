//! The xenstore shared ring page as a byte stream (being written).
