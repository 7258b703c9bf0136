//! Batch-invariant CPU kernels (placeholder until the engine lands).
