"""Client library for SAEs: ETSI GS QKD 014 over mutual TLS."""
