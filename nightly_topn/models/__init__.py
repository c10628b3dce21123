"""Recommenders behind one interface (``base.Recommender``), one small module per family."""
from nightly_topn.models.base import Recommender, load_model
from nightly_topn.models.factors import ALS, BPR, PureSVD
from nightly_topn.models.horizon import HorizonRecommender
from nightly_topn.models.neighbours import EASE, ItemKNN
from nightly_topn.models.popularity import Popularity
from nightly_topn.models.sequence import SequenceRecommender
from nightly_topn.models.vae import MultVAE

MODELS: dict[str, type[Recommender]] = {cls.name: cls for cls in (Popularity, ALS, BPR, ItemKNN, EASE, PureSVD, MultVAE, SequenceRecommender,
                                                          HorizonRecommender)}

__all__ = ["MODELS", "Recommender", "load_model", "ALS", "BPR", "EASE", "HorizonRecommender", "ItemKNN", "MultVAE", "Popularity", "PureSVD", "SequenceRecommender"]
