//! seqkv-ppm (in progress)
