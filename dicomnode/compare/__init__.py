"""Comparison with prior studies: find the patient's most recent comparable earlier study, measure it the
same way, match findings across the two time points and report what changed."""
