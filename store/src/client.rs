//! XenStore client (being written).
