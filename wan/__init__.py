"""Wan2.2 video diffusion toolkit."""
