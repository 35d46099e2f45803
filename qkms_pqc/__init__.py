"""Post-quantum wrapping of delivered keys (hybrid ML-KEM-768 + X25519)."""
