"""The weakly supervised losses of ReIR (paper Eq. 12-17), each reported separately by the model."""

from relground.losses.ranking import RankingEmbedding, contrastive_ranking_loss, ranking_loss
from relground.losses.reconstruction import (
    PhraseDecoder,
    phrase_target_lengths,
    reconstruction_loss,
    reconstruction_loss_static,
)
from relground.losses.regression import self_taught_regression_loss
from relground.losses.relation import (
    RelationClassifier,
    relation_class_weights,
    relation_loss,
    relation_loss_static,
)

__all__ = [
    "PhraseDecoder",
    "RankingEmbedding",
    "RelationClassifier",
    "phrase_target_lengths",
    "contrastive_ranking_loss",
    "ranking_loss",
    "reconstruction_loss",
    "reconstruction_loss_static",
    "relation_class_weights",
    "relation_loss",
    "relation_loss_static",
    "self_taught_regression_loss",
]
