"""DICOM helpers with no network or database: parsing, file meta, attributes."""
