#![no_std]
// This file exists so that the crate has a library target (aya-build builds
// the `guard` binary target for the BPF architecture).
