"""DICOM services: thin adapters from the engine's requests to the archive and back."""
