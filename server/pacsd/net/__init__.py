"""The DICOM listener and the per-association client handle."""
