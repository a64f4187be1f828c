"""Target-conditioned selection of source data (Ngiam et al. 2018).

weights  Pt from a sharded forward pass over target images, Ps, w = Pt / Ps, multi-label rules
plan     per-label plans from label counts alone (same, elastic, uniform, reverse, hierarchy, entire)
         and the preview CLI `python -m selection.plan`
write    the streaming, process-parallel writer of weighted, shuffled TFRecord shards
stats    Table 5 statistics and Figure 1's weight plot
The comparison methods (EMD similarity, domain classifier, k-means filter, Huh subsets) live in
their own modules and hand `write` a per-label plan or example id -> copies.
"""
