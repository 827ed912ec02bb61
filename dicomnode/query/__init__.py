"""Query/retrieve against a PACS or archive: C-FIND/C-MOVE/C-GET (DIMSE) or QIDO-RS/WADO-RS (DICOMweb)."""
