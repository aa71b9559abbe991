"""The synthetic lung-nodule study (issue 10): which features does each loss make a CNN learn, and how
does that change its accuracy under distribution shift?

Inspired by Baltatzis et al. 2021 (iMIMIC @ MICCAI, arXiv 2108.04815), not a reproduction; the design is
``shared/papers/loss_generalization.md`` section 3. The data come from the ``nodules`` source
(:mod:`support.data.nodules`); training is :mod:`support.training` (CE end to end, the embedding losses
in two stages). Modules:

* :mod:`.study`      runs of a profile, predictions per test preset, metrics with CIs, reliance, oracle
* :mod:`.probes`     linear probes on frozen features, counterfactual sensitivity
* :mod:`.analysis`   those measurements over every run of a study (cached), 2-D embeddings
* :mod:`.figures`    the ρ figure, reliance bars, loss x factor heatmaps, embedding plots
* :mod:`.writeup`    the closing note, written from the numbers

    >>> from support import nodules
    >>> study = nodules.Study("quick")      # doctest: +SKIP
    >>> study.train(); preds = study.predictions()  # doctest: +SKIP
"""
from .analysis import UNTRAINED, counterfactual_table, embeddings, probe_table
from .writeup import conclusion
from .probes import PROBE_FACTORS, counterfactual_sensitivity, probe_scores
from .study import (LEARNABILITY, METRICS, ORACLE, RHO_PRESETS, Study, display_table, metrics_table,
                    oracle_predictions, reliance, variant_label)

__all__ = ["LEARNABILITY", "METRICS", "ORACLE", "PROBE_FACTORS", "RHO_PRESETS", "UNTRAINED", "Study",
           "conclusion", "counterfactual_sensitivity", "counterfactual_table", "display_table", "embeddings",
           "metrics_table", "oracle_predictions", "probe_scores", "probe_table", "reliance", "variant_label"]
