"""The synthetic lung-nodule study (issues 10, 17): which features does each loss make a CNN learn, and how
does that change its accuracy under distribution shift?

Inspired by Baltatzis et al. 2021 (iMIMIC @ MICCAI, arXiv 2108.04815), not a reproduction; the design is
``shared/papers/loss_generalization.md`` section 3. The data come from the ``nodules`` source
(:mod:`support.data.nodules`); training is :mod:`support.training` (CE end to end, the embedding losses
in two stages or jointly with CE). Modules:

* :mod:`.regime`     the regime map (margin strength x training ρ) and the rule that picks the study cell
* :mod:`.study`      runs of a profile at a cell, predictions per test preset, reliance, oracle
* :mod:`.comparison` tables with seed × image intervals, worst-group accuracy, paired Δ vs cce (Holm)
* :mod:`.dfr`        encoded vs used: last-layer refits on a ρ 0.5 set (deep feature reweighting)
* :mod:`.curve`      the loss comparison at a few margin strengths around the cell
* :mod:`.probes`     linear probes on frozen features, counterfactual sensitivity
* :mod:`.analysis`   those measurements over every run of a study (cached), 2-D embeddings
* :mod:`.figures`    the map, the ρ figure, the curve, reliance bars, heatmaps, embedding plots
* :mod:`.writeup`    the closing note, written from the numbers

    >>> from support import nodules
    >>> study = nodules.Study("quick")      # doctest: +SKIP
    >>> study.train(); preds = study.predictions()  # doctest: +SKIP
"""
from .analysis import UNTRAINED, counterfactual_table, embeddings, probe_table
from .comparison import METRICS, display_table, group_table, loss_summary, metrics_table, paired_table
from .probes import PROBE_FACTORS, counterfactual_sensitivity, probe_scores
from .regime import choose_cell, regime_map
from .study import LEARNABILITY, ORACLE, RHO_PRESETS, Study, oracle_predictions, reliance, variant_label
from .writeup import conclusion

__all__ = ["LEARNABILITY", "METRICS", "ORACLE", "PROBE_FACTORS", "RHO_PRESETS", "UNTRAINED", "Study",
           "choose_cell", "conclusion", "counterfactual_sensitivity", "counterfactual_table", "display_table",
           "embeddings", "group_table", "loss_summary", "metrics_table", "oracle_predictions", "paired_table",
           "probe_scores", "probe_table", "regime_map", "reliance", "variant_label"]
