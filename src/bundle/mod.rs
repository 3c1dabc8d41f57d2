//! Bundle writer and reader.
