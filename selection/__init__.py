"""Target-conditioned selection of source data (Ngiam et al. 2018).

weights  Pt from a sharded forward pass over target images, Ps, w = Pt / Ps, multi-label rules
plan     per-label plans from label counts alone (same, elastic, uniform, reverse, hierarchy, entire)
         and the preview CLI `python -m selection.plan`
write    the streaming, process-parallel writer of weighted, shuffled TFRecord shards
stats    Table 5 statistics and Figure 1's weight plot
methods  the one registry of selection methods (names, parameters, how each plans)
The comparison methods' kernels (emd_similarity, domain_classifier, kmeans_filter, huh_subsets) live
in their own modules; `scoring` is the streaming, sharded pass over the source and its top-N/threshold
selection, `example_level` runs the methods that need it (helper networks, scoring, EMD class means).
They hand `write` a per-label plan or example id -> copies (and, for Huh's coarse labels, a remap).
"""
