"""The endpoint's limits by default; ServeConfig's defaults read them, so each is said once."""

DEFAULT_MAX_REQUEST_BYTES = 64 * 2 ** 20  # a 2048 x 2048 x 4 FP32 image in binary, with room to spare
DEFAULT_MAX_N = 128  # samples one request may ask for: compute grows with n, and one request must not hold the model
