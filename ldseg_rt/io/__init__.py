"""Files in and out: 2-D images and label maps (images), volumes (volumes), image/label
folder pairing (pairs), and atomic writes (atomic)."""
