//! What the CPU can run, for the kernels that dispatch to AVX-512 at run time (the build
//! targets baseline x86-64, so the fast paths are chosen per machine, not per build).

/// AVX-512 Foundation: the LUT, dense, bitmask and RTN kernels.
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX-512 F with the byte/word and vector-length extensions: masked 16-bit loads (the APoT
/// scale codes, f16 scales).
pub fn has_avx512_bw_vl() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512f()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
