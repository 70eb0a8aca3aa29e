"""The constants every sampler shares: the columns of a step table, the prediction types, the
renormalisation epsilon and the Philox stream ids. Their one source is csrc/constants.h; the
C++ extension exports them, so Python, the Triton step kernel and the C++ loop cannot drift."""
from .._C import PREDICTIONS, RENORM_EPS, STREAM_INIT, STREAM_STEP, TABLE_COLUMNS

# Column indices by name: row[COLUMN["sigma"]], never a bare row[6].
COLUMN = {name: i for i, name in enumerate(TABLE_COLUMNS)}

__all__ = ["COLUMN", "PREDICTIONS", "RENORM_EPS", "STREAM_INIT", "STREAM_STEP", "TABLE_COLUMNS"]
