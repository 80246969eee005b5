"""DICOM services: thin adapters from pynetdicom events to the archive and back."""
