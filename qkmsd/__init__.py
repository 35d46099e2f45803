"""The qkms node daemon."""
