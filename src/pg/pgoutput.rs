//! pgoutput (to be written).
