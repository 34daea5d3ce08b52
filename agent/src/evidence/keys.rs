//! The evidence signing key (placeholder; `keygen` and loading come next).
