//! kafka (to be written).
