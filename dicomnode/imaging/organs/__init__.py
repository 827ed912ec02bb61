"""Organ segmentation chains (liver on CT, lungs on CT, brain on MR) built from imaging steps."""
