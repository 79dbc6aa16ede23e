//! The CUDA backend (feature `cuda`): filled in by the CUDA-backend work.
