"""Weight clustering: k-means weight sharing trained through `fit`.

- `kmeans`: the maths (Lloyd's algorithm on scalars, initialisations);
- `wrapper`: `ClusterWeights`, the layer wrapper that trains shared values;
- `cluster`: `cluster_weights` / `strip_clustering` over whole models.

Reference:
    Han, Mao & Dally, "Deep Compression: Compressing Deep Neural Networks with
    Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
"""

from tfcompress.clustering.cluster import ClusteredModel, cluster_weights, strip_clustering
from tfcompress.clustering.kmeans import CentroidInitialization, init_centroids, kmeans_1d
from tfcompress.clustering.wrapper import ClusterWeights

__all__ = [
    "CentroidInitialization",
    "ClusterWeights",
    "ClusteredModel",
    "cluster_weights",
    "init_centroids",
    "kmeans_1d",
    "strip_clustering",
]
