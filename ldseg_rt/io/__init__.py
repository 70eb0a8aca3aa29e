"""Files in and out: 2-D images and label maps (images), volumes with their geometry (volume,
volumes: NIfTI), DICOM series (dicom_series), DICOM Segmentations and Parametric Maps
(dicom_outputs), the cases of a batch and their results on disk (cases, results), one case
end to end as `segment` and the Ray actors run it (batch),
image/label folder pairing (pairs), and atomic writes (atomic)."""
