# The signatures of analytics/_kernels.pyx, for type checkers. Every array is C-ordered and
# of the dtype in the .pyx: float64, int64, uint32, uint8 (for booleans) or float32.
import numpy as np

def score_samples(
    X: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    kids: np.ndarray,
    missing_right: np.ndarray,
    value: np.ndarray,
    roots: np.ndarray,
    depth: int,
    denominator: float,
) -> np.ndarray: ...
def log_scale(raw: np.ndarray, log_scaled: np.ndarray) -> None: ...
def distances(
    base: np.ndarray,
    codes: np.ndarray,
    median: np.ndarray,
    scale: np.ndarray,
    low_side_only: np.ndarray,
    out: np.ndarray,
) -> None: ...
def featurise(
    base: np.ndarray,
    codes: np.ndarray,
    median: np.ndarray,
    scale: np.ndarray,
    log_scaled: np.ndarray,
    low_side_only: np.ndarray,
    session_counts: np.ndarray,
    wallet_counts: np.ndarray,
    n_providers: int,
    fresh: np.ndarray,
    has_fresh: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def evidence(
    distance: np.ndarray,
    X: np.ndarray,
    provider: np.ndarray,
    class_of: np.ndarray,
    coef: np.ndarray,
    intercept: np.ndarray,
    center: np.ndarray,
    spread: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]: ...
def combine(
    evidence: np.ndarray, forest_score: np.ndarray, forest_center: float, forest_spread: float
) -> tuple[np.ndarray, np.ndarray]: ...
def thompson_wins(means: np.ndarray, sds: np.ndarray, draws: np.ndarray) -> np.ndarray: ...
