"""The scanner-side service (`python -m ldseg_rt serve`): one loaded model behind a bounded
work queue, served through an Open Inference Protocol HTTP endpoint and a DICOM node."""
