"""Training data: synthetic RGB-D sets (Hypersim, Virtual KITTI 2 in Marigold's layouts, a generic
RGB-D folder), real unlabeled images (folder or webdataset shards) with cached pseudo-labels, and
the deterministic half-synthetic / half-real batch plan."""
