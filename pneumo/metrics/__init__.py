"""Stage 3, metrics: classification metrics, the operating point, patient-bootstrap intervals, calibration."""
