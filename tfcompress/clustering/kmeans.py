"""k-means on scalars: the maths of weight clustering (NumPy, no Keras).

Reference:
    Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding",
    SODA 2007.
"""

import numpy as np


class CentroidInitialization:
    """Names of the centroid initialisations (same names as tfmot's enum).

    - `LINEAR`: evenly spaced between the smallest and largest weight; keeps
      the rare large weights, which Han et al. found best for accuracy.
    - `KMEANS_PLUS_PLUS`: k-means++ seeding (Arthur & Vassilvitskii 2007).
    - `DENSITY_BASED`: evenly spaced quantiles of the weights, so that dense
      regions of the distribution get more centroids.

    Every initialisation is followed by Lloyd iterations to convergence.
    """

    LINEAR = "linear"
    KMEANS_PLUS_PLUS = "kmeans++"
    DENSITY_BASED = "density"


INITS = (
    CentroidInitialization.LINEAR,
    CentroidInitialization.KMEANS_PLUS_PLUS,
    CentroidInitialization.DENSITY_BASED,
)

def kmeans_1d(values, centroids, max_iter=300):
    """Lloyd's algorithm on scalars, from given initial centroids.

    Args:
        values: 1-D array of the values to cluster.
        centroids: 1-D array of initial centroids.
        max_iter: largest number of Lloyd iterations.

    Returns:
        The centroids at convergence, sorted (float64). A centroid that loses
        all its members keeps its previous value.

    Example:
        >>> kmeans_1d(np.array([0.0, 0.1, 1.0, 1.2]), np.array([0.0, 1.0]))
        array([0.05, 1.1 ])
    """
    values = np.asarray(values, dtype="float64").ravel()
    centroids = np.sort(np.asarray(centroids, dtype="float64"))
    assignment = None
    for _ in range(max_iter):
        new_assignment = _nearest(values, centroids)
        if assignment is not None and np.array_equal(new_assignment, assignment):
            break
        assignment = new_assignment
        sums = np.bincount(assignment, weights=values, minlength=len(centroids))
        counts = np.bincount(assignment, minlength=len(centroids))
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        centroids = np.sort(centroids)
    return centroids


def _nearest(values, sorted_centroids):
    """Index of the nearest of the sorted centroids (ties to the lower one)."""
    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, values, side="left")


def init_centroids(values, number_of_clusters, method, rng):
    """Initial centroids of one set of weights.

    Args:
        values: 1-D array of weights.
        number_of_clusters: number of centroids.
        method: one of `CentroidInitialization`'s names.
        rng: a `numpy.random.Generator` (used by k-means++ only).

    Returns:
        A 1-D float64 array of `number_of_clusters` centroids.
    """
    values = np.asarray(values, dtype="float64").ravel()
    k = number_of_clusters
    if method == CentroidInitialization.LINEAR:
        return np.linspace(values.min(), values.max(), k)
    if method == CentroidInitialization.DENSITY_BASED:
        return np.quantile(values, (np.arange(k) + 0.5) / k)
    centroids = [values[rng.integers(len(values))]]
    dist2 = (values - centroids[0]) ** 2
    for _ in range(1, k):
        total = dist2.sum()
        pick = rng.integers(len(values)) if total == 0 else rng.choice(len(values), p=dist2 / total)
        centroids.append(values[pick])
        dist2 = np.minimum(dist2, (values - values[pick]) ** 2)
    return np.asarray(centroids)


