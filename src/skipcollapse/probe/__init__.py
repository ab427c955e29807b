"""Probe a model's blocks for neural collapse on downstream data, to pick the SCL-FT block and rank backbones.

Li et al. find that the more a pre-trained model's features collapse on the *downstream training data*
(lower NC1), the better it transfers. That makes NC1 a score that costs one forward pass over the data and no
training, at two levels:

* `probe_layers`: NC1 (and CDNV, NC2) of the pooled output of every block, from ONE forward pass per batch
  with a forward hook on each block, accumulated in one streaming `CollapseMetrics` per block. The report
  recommends the block to fine-tune with SCL-FT (`RECOMMENDATION_RULE`).
* `rank_backbones`: NC1 of the features each backbone's head sees, next to the H-score and LogME of the same
  features (`skipcollapse.collapse.transferability`), ranked; `rank_correlation`/`score_correlations` say which score
  tracks the transfer accuracies you measured.

Blocks are pooled as the adapter would pool them (`skipcollapse.adapter.layer.pool`), the way the model pools its
last block (measured, `skipcollapse.adapter.measure.classified_pooling`): the CLS token (after the model's own final
norm where its width fits) for ViT/BERT-style encoders, a mean over tokens, the last token for decoders, the global
average for CNN maps (whose width changes per stage: one metric per block, so that is fine). Under
``torch.distributed`` each process probes its shard of a dataset (`skipcollapse.collapse.features.shard_loader`) and
the statistics are summed across processes, so every
process gets the same report.
"""

from .layers import probe_layers
from .ranking import rank_backbones, rank_correlation, score_backbone, score_correlations
from .report import RECOMMENDATION_RULE, LayerReport, LayerRow, recommend_layer

__all__ = [
    "RECOMMENDATION_RULE",
    "LayerReport",
    "LayerRow",
    "probe_layers",
    "rank_backbones",
    "rank_correlation",
    "recommend_layer",
    "score_backbone",
    "score_correlations",
]
