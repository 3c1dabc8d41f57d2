//! `endpoint-config --platform windows` (filled below).
