"""Small shared mechanisms: atomic I/O, seeding, devices, provenance, progress, TensorBoard logging."""
