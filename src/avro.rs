//! avro (to be written).
