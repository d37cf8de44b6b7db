"""Type stub for esp._classify (the compiled SPD classifier and inbound demux)."""
import numpy as np

SELECTOR_COLUMNS: int

def classify(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, table: np.ndarray, out: np.ndarray,
             rows: np.ndarray | None = None) -> None: ...
def esp_demux(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, spi: np.ndarray,
              kind: np.ndarray) -> None: ...
